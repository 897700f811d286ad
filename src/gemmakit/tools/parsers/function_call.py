"""``FUNCTION_CALL: name(param="value")`` lines (the prompt style of the function-calling prompt
builder, prompts/builders.py): one call per line, literal keyword arguments, parsed with `ast`."""

from __future__ import annotations

from typing import ClassVar

from gemmakit.tools.parsers.base import CallParser, ParsedCall, python_calls

MARKER = "FUNCTION_CALL:"


class FunctionCallLineParser(CallParser):
    name = "function_call"
    markers: ClassVar[tuple[str, ...]] = (MARKER,)

    def match(self, text: str, pos: int) -> tuple[int, list[ParsedCall]] | None:
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        calls = python_calls(text[pos + len(MARKER):end], bare=True)
        return (end, calls) if calls else None
