"""The JSONL suite format: one item per line, checked as a whole before anything runs.

    {"id": "capital-fr", "prompt": "The capital of France is", "max_tokens": 8,
     "contains": "Paris", "reference": " Paris, the largest city of the country."}

An item has a `prompt` (raw completion) or `messages` (chat), generation settings, and any of the
checks: `exact`, `contains`, `regex`, `json`, `json_schema`, `reference` (ROUGE-L against the
output and, with the local engine, the perplexity of the reference text).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gemmakit.errors import ConfigError


class EvalMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str


class EvalItem(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = ""
    prompt: str | None = None
    messages: list[EvalMessage] | None = None
    max_tokens: int = Field(default=32, ge=1)
    temperature: float = Field(default=0.0, ge=0, le=2)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    # checks
    exact: str | None = None
    contains: list[str] | None = None
    regex: str | None = None
    json_valid: bool = Field(default=False, alias="json")
    json_schema: dict[str, Any] | None = None
    reference: str | None = None
    tags: list[str] = Field(default_factory=list)

    @field_validator("contains", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return v

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            from jsonschema import SchemaError, validators

            try:
                validators.validator_for(v).check_schema(v)
            except SchemaError as e:
                raise ValueError(f"not a valid JSON schema: {e.message}") from None
        return v

    @model_validator(mode="after")
    def _one_input(self) -> EvalItem:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("an item needs exactly one of 'prompt' or 'messages'")
        return self

    @property
    def checks(self) -> list[str]:
        """The pass/fail checks this item asks for."""
        out = []
        if self.exact is not None:
            out.append("exact_match")
        if self.contains:
            out.append("contains")
        if self.regex is not None:
            out.append("regex")
        if self.json_valid:
            out.append("json_valid")
        if self.json_schema is not None:
            out.append("json_schema")
        return out


def load_suite(path: str | Path) -> list[EvalItem]:
    """Every item of a JSONL suite (blank lines and `#` comments skipped); any bad line is an
    error naming its line number, before anything runs."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"suite file not found: {p}")
    items: list[EvalItem] = []
    problems: list[str] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = EvalItem.model_validate(json.loads(line))
        except json.JSONDecodeError as e:
            problems.append(f"line {n}: not JSON ({e.msg})")
            continue
        except ValidationError as e:
            msgs = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'item'}: {err['msg']}"
                             for err in e.errors())
            problems.append(f"line {n}: {msgs}")
            continue
        items.append(item.model_copy(update={"id": item.id or f"line-{n}"}))
    ids = [i.id for i in items]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        problems.append(f"duplicate ids: {', '.join(dupes)}")
    if problems:
        raise ConfigError(f"invalid suite {p.name}: " + "; ".join(problems[:10]))
    if not items:
        raise ConfigError(f"suite {p.name} has no items")
    return items
