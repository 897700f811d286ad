"""Function calling and structured output for Gemma.

- `schema`: OpenAI tool definitions -> checked `ToolSpec`s; Python functions -> JSON schema
  (`@gemmakit.tool`); argument validation with `jsonschema`.
- `constraints`: JSON schema -> llama.cpp GBNF grammar (forced calls, `response_format`).
- `parsers/`: one file per call syntax Gemma writes (JSON objects, Python-style calls,
  `FUNCTION_CALL:` lines), each with a streaming variant.
- `chat`: the per-request tool plan (prompt declarations, constraint, parsing of the reply).
- `runner`: executes Python tools with time limits and loops model -> calls -> results -> model.
"""

from gemmakit.tools.schema import ToolSpec, tool

__all__ = ["ToolSpec", "tool"]
