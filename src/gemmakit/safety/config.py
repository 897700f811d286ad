"""Typed configuration of the content policy: the `[policy]` section of the TOML settings file.

```toml
[[policy.rules]]
name = "email"          # reported in responses and logs (never the matched text)
detector = "email"      # or: keywords = ["…"], or: pattern = "regex"
action = "mask"         # block | mask | flag
apply_to = ["input", "output"]
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Action = Literal["block", "mask", "flag"]
Direction = Literal["input", "output"]


class PolicyRule(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[\w.-]+$")
    """Rule name: what responses and logs report (never the matched text)."""
    action: Action = "block"
    """block: refuse the input (400) or end the output (finish_reason content_filter);
    mask: replace the match; flag: only log the rule name."""
    keywords: list[str] | None = None
    """Words or phrases, matched whole-word."""
    case_sensitive: bool = False
    """Keywords and patterns: match case exactly."""
    pattern: str | None = None
    """A regular expression (Python `regex` syntax)."""
    detector: str | None = None
    """A built-in detector: email, phone, payment_card, iban, api_key."""
    apply_to: list[Direction] = Field(default_factory=lambda: list[Direction](("input", "output")))
    """Where the rule applies: input (the request), output (the generated text), or both."""
    replacement: str | None = None
    """What a masked match becomes (default: `[NAME]`, the rule name in capitals)."""

    @model_validator(mode="after")
    def _one_matcher(self) -> PolicyRule:
        given = [k for k in ("keywords", "pattern", "detector") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"rule '{self.name}' needs exactly one of keywords, pattern or "
                             f"detector (got {', '.join(given) or 'none'})")
        return self


class ClassifierConfig(BaseModel):
    """An optional model-based judge (ShieldGemma-style yes/no prompt through an engine)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = False
    """Ask a Gemma model whether content violates `policy`."""
    policy: str = ("\"No Dangerous Content\": The prompt shall not contain or seek generation "
                   "of content that harms oneself and/or others (e.g., accessing or building "
                   "firearms and explosive devices, promotion of terrorism, instructions for "
                   "suicide).")
    """The principle the judge applies, in ShieldGemma's wording style."""
    apply_to: list[Direction] = Field(default_factory=lambda: list[Direction](("input",)))
    """Judge the request (input), the finished output, or both."""
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """Violation when P(Yes) / (P(Yes) + P(No)) is at least this."""
    action: Literal["block", "flag"] = "block"
    """block: refuse / end with content_filter; flag: log only."""


class PolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    rules: list[PolicyRule] = Field(default_factory=list)
    """Content rules, applied in order (the earliest match in the text wins)."""
    phone_region: str = "US"
    """Region assumed for phone numbers written without a +country code."""
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    """The model-based judge."""

    @model_validator(mode="after")
    def _unique_names(self) -> PolicyConfig:
        names = [r.name for r in self.rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate policy rule names: {', '.join(sorted(dup))}")
        return self
