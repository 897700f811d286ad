"""Tool-call parsers: one file per call syntax, found by name through a lazy registry.

Each parser turns a finished model reply into prose `content` plus calls (`parse`), and has a
streaming variant (`StreamingParser(parser)`) that sends prose as it arrives and the calls at the
end; the streamed pieces rebuild exactly what `parse` returns (tests/unit/tools/test_parsers.py).
"""

from __future__ import annotations

import importlib

from gemmakit.errors import ConfigError
from gemmakit.tools.parsers.base import CallParser, ParsedCall, ParseResult, StreamingParser

PARSERS: dict[str, str] = {
    "json": "gemmakit.tools.parsers.json_calls:JsonCallParser",
    "pythonic": "gemmakit.tools.parsers.pythonic:PythonicCallParser",
    "function_call": "gemmakit.tools.parsers.function_call:FunctionCallLineParser",
}


def get_parser(name: str) -> CallParser:
    """A parser instance by its key (imports only that parser's module)."""
    try:
        target = PARSERS[name]
    except KeyError:
        raise ConfigError(f"unknown tool parser '{name}' (available: "
                          f"{', '.join(sorted(PARSERS))})") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["PARSERS", "CallParser", "ParseResult", "ParsedCall", "StreamingParser", "get_parser"]
