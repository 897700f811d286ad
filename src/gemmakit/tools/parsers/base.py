"""What every call syntax shares: finding where a call may start, cutting calls out of the prose,
and the streaming variant.

A call block starts at the beginning of a line (after spaces) with one of the parser's markers
(``{``, ``[``, a code fence, ``FUNCTION_CALL:``). Text before the first possible start is prose and
streams at once; from there on it is held until the reply ends, then parsed whole — so streamed
and non-streamed results are the same by construction. Content is the prose with the call blocks cut
out, trimmed; ``None`` when nothing is left.
"""

from __future__ import annotations

import ast
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: Any  # decoded JSON value (normally an object)

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass
class ParseResult:
    content: str | None
    calls: list[ParsedCall] = field(default_factory=list)


class CallParser(ABC):
    name: ClassVar[str]
    markers: ClassVar[tuple[str, ...]]
    """Texts that may begin a call block at the start of a line."""

    @abstractmethod
    def match(self, text: str, pos: int) -> tuple[int, list[ParsedCall]] | None:
        """The calls of a block starting at `pos` and the index just past it, or None."""

    def _line_starts(self, text: str) -> Iterator[int]:
        """Index of the first non-blank character of each line."""
        start = 0
        while True:
            p = start
            while p < len(text) and text[p] in " \t":
                p += 1
            yield p
            nl = text.find("\n", start)
            if nl < 0:
                return
            start = nl + 1

    def candidates(self, text: str) -> Iterator[int]:
        for p in self._line_starts(text):
            if text.startswith(self.markers, p):
                yield p

    def hold_from(self, text: str) -> int | None:
        """Where text that may belong to a call starts: the first candidate, or a last line that
        is still a prefix of a marker. Streaming holds everything from there."""
        first = next(self.candidates(text), None)
        if first is not None:
            return first
        last = list(self._line_starts(text))[-1]
        tail = text[last:]
        if tail and "\n" not in tail and any(m.startswith(tail) for m in self.markers):
            return last
        return None

    def parse(self, text: str) -> ParseResult:
        calls: list[ParsedCall] = []
        pieces: list[str] = []
        pos = 0
        for p in self.candidates(text):
            if p < pos:
                continue  # inside a block already cut out
            m = self.match(text, p)
            if m is None:
                continue
            end, found = m
            pieces.append(text[pos:p])
            calls += found
            pos = end
        pieces.append(text[pos:])
        content = "".join(pieces).strip()
        return ParseResult(content or None, calls)


class StreamingParser:
    """Incremental variant of a CallParser: `feed` returns the content to send now, `finish`
    the rest of the content and the calls."""

    def __init__(self, parser: CallParser) -> None:
        self.parser = parser
        self.text = ""
        self._sent = 0  # text[_lead:_sent] has been sent as content
        self._lead: int | None = None
        self._held = False

    @property
    def sent(self) -> str:
        return self.text[self._lead:self._sent] if self._lead is not None else ""

    def feed(self, delta: str) -> str:
        self.text += delta
        if self._held:
            return ""
        hold = self.parser.hold_from(self.text)
        safe = self.text if hold is None else self.text[:hold]
        if hold is not None and self.text.startswith(self.parser.markers, hold):
            self._held = True  # a real marker: everything after it waits for the end
        if self._lead is None:
            stripped = safe.lstrip()
            if not stripped:
                return ""
            self._lead = self._sent = len(safe) - len(stripped)
        end = len(safe.rstrip())  # trailing blanks wait: they may end the content
        if end <= self._sent:
            return ""
        out = self.text[self._sent:end]
        self._sent = end
        return out

    def finish(self) -> tuple[str, ParseResult]:
        """(content still to send, the whole result)."""
        result = self.parser.parse(self.text)
        return remainder(self.sent, result.content), result


def remainder(sent: str, content: str | None) -> str:
    """What is left to send of `content` after `sent` (always one of its prefixes)."""
    full = content or ""
    if not full.startswith(sent):  # pragma: no cover - guarded by the contract tests
        raise AssertionError("streamed content is not a prefix of the parsed content")
    return full[len(sent):]


# --- Python-style calls (shared by the pythonic and FUNCTION_CALL syntaxes) --------------------
_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and not isinstance(node.value, (bytes, complex)):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values):
            key = _literal(k) if k is not None else None
            if not isinstance(key, str):
                raise ValueError("object keys must be strings")
            out[key] = _literal(v)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    raise ValueError("not a literal")


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _call(node: ast.AST) -> ParsedCall | None:
    if not isinstance(node, ast.Call) or node.args:
        return None
    name = _dotted(node.func)
    if name is None or any(k.arg is None for k in node.keywords):
        return None
    try:
        return ParsedCall(name, {k.arg: _literal(k.value) for k in node.keywords})
    except ValueError:
        return None


def python_calls(src: str, *, bare: bool) -> list[ParsedCall] | None:
    """Calls written as ``[f(a=1), g(b="x")]``; with `bare`, also ``f(a=1)`` statements, one per
    line. Only literal keyword arguments are accepted (the text is parsed, never evaluated)."""
    src = src.strip()
    if not src or len(src) > 100_000:
        return None
    try:
        tree = ast.parse(src, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    exprs = [s.value for s in tree.body if isinstance(s, ast.Expr)]
    if not exprs or len(exprs) != len(tree.body):
        return None
    calls: list[ParsedCall] = []
    for e in exprs:
        if isinstance(e, ast.List) and e.elts:
            items = [_call(x) for x in e.elts]
        elif bare:
            items = [_call(e)]
        else:
            return None
        if any(c is None for c in items):
            return None
        calls += items  # type: ignore[arg-type]
    return calls


def fenced(text: str, pos: int, langs: tuple[str, ...]) -> tuple[str, int] | None:
    """(inner text, end) of a ``` fence opening at `pos` with one of `langs` ('' = none)."""
    nl = text.find("\n", pos)
    if nl < 0:
        return None
    lang = text[pos + 3:nl].strip().lower()
    if lang not in langs:
        return None
    close = text.find("```", nl + 1)
    if close < 0:
        return None
    return text[nl + 1:close], close + 3
