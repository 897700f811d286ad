"""JSON calls: ``{"name": "f", "parameters": {...}}`` (or ``"function_name"`` / ``"arguments"``,
arguments possibly a JSON string), alone or as a list, bare or in a ```json / ```tool_code fence.
This is the syntax gemmakit's prompt asks Gemma for, and the one forced by the grammar."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from gemmakit.tools.parsers.base import CallParser, ParsedCall, fenced

_DECODER = json.JSONDecoder(strict=False)


def _as_call(obj: Any) -> ParsedCall | None:
    if not isinstance(obj, dict):
        return None
    name = obj.get("name", obj.get("function_name"))
    key = "parameters" if "parameters" in obj else "arguments" if "arguments" in obj else None
    if not isinstance(name, str) or not name or key is None:
        return None
    if set(obj) - {"name", "function_name", "parameters", "arguments", "type", "id"}:
        return None
    args = obj[key]
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return ParsedCall(name, args)


def json_calls(obj: Any) -> list[ParsedCall] | None:
    if isinstance(obj, list):
        calls = [_as_call(o) for o in obj]
        return calls if calls and all(c is not None for c in calls) else None  # type: ignore
    call = _as_call(obj)
    return [call] if call else None


def _decode(text: str, pos: int) -> tuple[Any, int] | None:
    try:
        return _DECODER.raw_decode(text, pos)
    except (ValueError, RecursionError):
        return None


class JsonCallParser(CallParser):
    name = "json"
    markers: ClassVar[tuple[str, ...]] = ("{", "[", "```")

    def match(self, text: str, pos: int) -> tuple[int, list[ParsedCall]] | None:
        if text.startswith("```", pos):
            block = fenced(text, pos, ("json", "tool_code", ""))
            if block is None:
                return None
            inner, end = block
            got = _decode(inner.strip(), 0)
            if got is None or got[1] != len(inner.strip()):
                return None
            calls = json_calls(got[0])
            return (end, calls) if calls else None
        got = _decode(text, pos)
        if got is None:
            return None
        calls = json_calls(got[0])
        return (got[1], calls) if calls else None
