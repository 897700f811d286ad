"""Content policy: rules (keywords, regular expressions, built-in detectors) with the actions
block, mask and flag, applied to the request and to the generated stream.

Streamed output is filtered by `OutputFilter`, which holds back only text that could still become
part of a match: every rule's pattern is searched with *partial* matching (the `regex` module), so
the held tail is exactly the text from the earliest position where some rule's match is still
possible. A match split over chunks ("jo" + "hn@exa" + "mple.com") is caught whole, and ordinary
text passes through as soon as it can no longer start a match.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gemmakit.errors import ConfigError, InvalidRequestError
from gemmakit.safety.config import Action, Direction, PolicyConfig, PolicyRule

log = logging.getLogger("gemmakit.safety.policy")

_CONTEXT = 64  # characters of already-emitted text kept for look-behind assertions


class PolicyViolationError(InvalidRequestError):
    code = "content_policy_violation"


@dataclass(frozen=True)
class _Rule:
    name: str
    action: Action
    directions: frozenset[str]
    pattern: Any  # compiled `regex` pattern
    check: Any
    replacement: str


@dataclass(frozen=True)
class Finding:
    rule: str
    action: Action
    start: int
    end: int


@dataclass
class Hits:
    """What the policy did, by rule name: reported in responses as `content_filter_results`."""

    counts: dict[str, tuple[Action, int]] = field(default_factory=dict)

    def add(self, rule: str, action: Action) -> None:
        prev = self.counts.get(rule, (action, 0))[1]
        self.counts[rule] = (action, prev + 1)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def as_dict(self) -> dict[str, Any]:
        return {rule: {"filtered": action != "flag", "action": action, "count": n}
                for rule, (action, n) in self.counts.items()}


def _compile(rule: PolicyRule) -> tuple[Any, Any]:
    import regex

    flags = 0 if rule.case_sensitive else regex.IGNORECASE
    if rule.detector:
        from gemmakit.safety import detectors

        d = detectors.load(rule.detector)
        return d.pattern, d.check
    if rule.keywords:
        words = sorted((k for k in rule.keywords if k), key=len, reverse=True)
        alts = "|".join(regex.escape(w) for w in words)
        # Whole words: no word character on either side (works for phrases and punctuation too).
        return regex.compile(rf"(?<!\w)(?:{alts})(?!\w)", flags), None
    try:
        return regex.compile(rule.pattern, flags), None
    except regex.error as e:
        raise ConfigError(f"policy rule '{rule.name}': bad pattern: {e}") from None


class Policy:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.rules: list[_Rule] = []
        for r in config.rules:
            pattern, check = _compile(r)
            self.rules.append(_Rule(r.name, r.action, frozenset(r.apply_to), pattern, check,
                                    r.replacement if r.replacement is not None
                                    else f"[{r.name.upper()}]"))
        self.region = config.phone_region

    def applies(self, direction: Direction) -> bool:
        return any(direction in r.directions for r in self.rules)

    def output_rewrites(self) -> bool:
        """Output rules that change text (mask/block): logprobs would reveal what they hide."""
        return any("output" in r.directions and r.action != "flag" for r in self.rules)

    # --- matching -----------------------------------------------------------------------------
    def _scan(self, text: str, start: int, rules: Sequence[_Rule], final: bool
              ) -> tuple[list[tuple[Finding, _Rule]], int]:
        """Findings in text[start:] and the position from which text must be held back (len(text)
        when nothing can still grow into a match). Findings are ordered and do not overlap."""
        hold = len(text)
        found: list[tuple[int, int, int, _Rule]] = []
        for order, rule in enumerate(rules):
            for m in rule.pattern.finditer(text, start):
                if not final and m.end() == len(text):
                    hold = min(hold, m.start())  # complete, but it may still grow
                    break
                if m.end() > m.start() and (rule.check is None
                                            or rule.check(m.group(), self.region)):
                    found.append((m.start(), -m.end(), order, rule))
            if not final:
                hold = min(hold, self._partial_start(rule.pattern, text, start, hold))
        found.sort(key=lambda f: (f[0], f[1], f[2]))
        out: list[tuple[Finding, _Rule]] = []
        last_end = start
        for s, neg_e, _, rule in found:
            e = -neg_e
            if s < last_end:
                continue
            out.append((Finding(rule.name, rule.action, s, e), rule))
            last_end = e
        # A finding that reaches into the held tail is decided later, with the tail.
        while out and out[-1][0].end > hold:
            hold = min(hold, out.pop()[0].start)
        return out, hold

    @staticmethod
    def _partial_start(pattern: Any, text: str, start: int, limit: int) -> int:
        """The earliest position before `limit` from which the rest of `text` is the beginning
        of a possible match (`regex` reports a complete match in preference to an earlier
        partial one, so each start is asked directly); `limit` if there is none."""
        for p in range(start, limit):
            if pattern.fullmatch(text, p, partial=True) is not None:
                return p
        return limit

    def _rules(self, direction: Direction) -> list[_Rule]:
        return [r for r in self.rules if direction in r.directions]

    def apply_input(self, text: str, param: str, hits: Hits, request_id: str = "-") -> str:
        """Check one piece of request text: raise on block, return it masked, log flags."""
        findings, _ = self._scan(text, 0, self._rules("input"), final=True)
        if not findings:
            return text
        out, pos = [], 0
        for f, rule in findings:
            hits.add(f.rule, f.action)
            if f.action == "block":
                log.warning("request %s: input blocked by policy rule %s", request_id, f.rule)
                raise PolicyViolationError(
                    f"The request was refused by the content policy (rule '{f.rule}').",
                    param=param)
            if f.action == "flag":
                log.warning("request %s: input flagged by policy rule %s", request_id, f.rule)
                continue
            out += [text[pos:f.start], rule.replacement]
            pos = f.end
        return "".join(out) + text[pos:]

    def output_filter(self, request_id: str = "-", hits: Hits | None = None) -> OutputFilter:
        return OutputFilter(self, self._rules("output"), request_id, hits)


class OutputFilter:
    """Streaming output policy for one choice: feed text as it arrives, emit what is safe."""

    def __init__(self, policy: Policy, rules: list[_Rule], request_id: str,
                 hits: Hits | None = None) -> None:
        self._policy, self._rules, self._rid = policy, rules, request_id
        self._held = ""
        self._context = ""
        self.hits = hits if hits is not None else Hits()
        self.blocked: str | None = None

    def feed(self, text: str) -> str:
        """Add generated text; return the text that may be sent now (masked as needed). After a
        block, `blocked` names the rule and everything else is dropped."""
        return self._run(text, final=False)

    def flush(self) -> str:
        """End of the stream: decide the held-back tail."""
        return self._run("", final=True)

    def _run(self, text: str, final: bool) -> str:
        if self.blocked is not None:
            return ""
        if not self._rules:
            return text
        buf = self._context + self._held + text
        start = len(self._context)
        findings, hold = self._policy._scan(buf, start, self._rules, final)
        out, pos = [], start
        for f, rule in findings:
            self.hits.add(f.rule, f.action)
            if f.action == "flag":
                log.warning("request %s: output flagged by policy rule %s", self._rid, f.rule)
                continue
            out.append(buf[pos:f.start])
            pos = f.end
            if f.action == "block":
                log.warning("request %s: output stopped by policy rule %s", self._rid, f.rule)
                self.blocked = f.rule
                self._held = ""
                return "".join(out)
            out.append(rule.replacement)
        out.append(buf[pos:hold])
        emitted = "".join(out)
        self._held = buf[hold:]
        self._context = (buf[:hold])[-_CONTEXT:]
        return emitted
