"""Python-style calls, Gemma's documented syntax: ``[get_weather(location="Tokyo"), ...]``,
bare or inside a ```tool_code fence (where a bare ``f(a=1)`` per line is accepted too).
Arguments must be literals; the text is parsed with `ast`, never evaluated."""

from __future__ import annotations

from typing import ClassVar

from gemmakit.tools.parsers.base import CallParser, ParsedCall, fenced, python_calls

_MAX_TRIES = 64  # closing brackets tried per candidate list


class PythonicCallParser(CallParser):
    name = "pythonic"
    markers: ClassVar[tuple[str, ...]] = ("[", "```")

    def match(self, text: str, pos: int) -> tuple[int, list[ParsedCall]] | None:
        if text.startswith("```", pos):
            block = fenced(text, pos, ("tool_code", "python", "py", ""))
            if block is None:
                return None
            inner, end = block
            calls = python_calls(inner, bare=True)
            return (end, calls) if calls else None
        end = pos
        for _ in range(_MAX_TRIES):
            end = text.find("]", end + 1)
            if end < 0:
                return None
            calls = python_calls(text[pos:end + 1], bare=False)
            if calls:
                return end + 1, calls
        return None
