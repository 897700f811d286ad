"""JSON schema -> grammar constraints for the engine.

Forced tool calls (`tool_choice: "required"` or a named function) and structured answers
(`response_format` json_object / json_schema) become a `Constraint(kind="grammar")` holding a
llama.cpp GBNF grammar, compiled here — before the request reaches an engine — by llama-cpp-python's
maintained JSON-schema converter (`llama_cpp.llama_grammar.SchemaConverter`), with two additions it
lacks: integer `minimum`/`maximum` bounds, and strings that cannot hold raw control characters (so
the text is strict JSON). The grammar is then parsed by llama.cpp's own grammar parser, so a grammar
it would refuse is a 400 here and never a failed engine step.

The forced-call grammar matches the call syntax the prompt asks for (prompts/gemma_tools.py)::

    {"name": "get_weather", "parameters": {...that tool's schema...}}
    [{"name": ..., "parameters": ...}, ...]          # parallel_tool_calls: a non-empty list

The transformers engine will use xgrammar (docs/tools.md says why); it takes the same GBNF.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from gemmakit.errors import ConfigError, InvalidRequestError
from gemmakit.tools.schema import SchemaError, ToolSpec, check_schema
from gemmakit.types import Constraint

MAX_GRAMMAR_BYTES = 512 * 1024
MAX_CALLS_PER_REPLY = 8
"""A forced reply holds at most this many parallel calls (the grammar then closes the list)."""
_MAX_INT_DIGITS = 16  # the converter's own integers have at most 16 digits

# JSON string characters: anything but '"', '\' and control characters (U+0000-U+001F), or an
# escape. The converter's rule lets raw control characters through, which strict JSON forbids.
_CHAR_RULE = (r'[^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] '
              r'[0-9a-fA-F])')


# --- integer ranges as grammar --------------------------------------------------------------
def _digits_between(a: str, b: str) -> list[str]:
    """GBNF alternatives matching every decimal string of len(a) digits in [a, b] (a <= b)."""
    if a == b:
        return [f'"{a}"']
    if len(a) == 1:
        return [f"[{a}-{b}]"]
    rest = len(a) - 1
    if a[1:] == "0" * rest and b[1:] == "9" * rest:
        return [f"[{a[0]}-{b[0]}] [0-9]{{{rest}}}"]
    if a[0] == b[0]:
        return [f'"{a[0]}" ({" | ".join(_digits_between(a[1:], b[1:]))})']
    out = [f'"{a[0]}" ({" | ".join(_digits_between(a[1:], "9" * rest))})']
    lo, hi = int(a[0]) + 1, int(b[0]) - 1
    if lo <= hi:
        out.append(f"[{lo}-{hi}] [0-9]{{{rest}}}")
    out.append(f'"{b[0]}" ({" | ".join(_digits_between("0" * rest, b[1:]))})')
    return out


def _nonneg_range(lo: int, hi: int | None) -> list[str]:
    """Alternatives for the JSON integers n >= 0 with lo <= n <= hi (hi None: up to 16 digits)."""
    top = hi if hi is not None else 10 ** _MAX_INT_DIGITS - 1
    out: list[str] = []
    for n_digits in range(len(str(lo)), len(str(top)) + 1):
        a = max(lo, 10 ** (n_digits - 1) if n_digits > 1 else 0)
        b = min(top, 10 ** n_digits - 1)
        if a <= b:
            out += _digits_between(str(a), str(b))
    return out


def int_range_rule(minimum: int | None, maximum: int | None) -> str:
    """A GBNF expression matching exactly the JSON integers in [minimum, maximum]."""
    if minimum is not None and maximum is not None and minimum > maximum:
        raise SchemaError(f"minimum {minimum} is greater than maximum {maximum}")
    alts: list[str] = []
    if minimum is None or minimum < 0:  # negative part, by magnitude
        mag_lo = 1 if maximum is None or maximum >= 0 else -maximum
        mag_hi = None if minimum is None else -minimum
        alts += [f'"-" ({a})' for a in _nonneg_range(mag_lo, mag_hi)]
    if maximum is None or maximum >= 0:
        alts += _nonneg_range(max(minimum or 0, 0), maximum)
    return "(" + " | ".join(alts) + ")"


def _int_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    if "exclusiveMinimum" in schema:
        x = int(schema["exclusiveMinimum"]) + 1
        lo = x if lo is None else max(int(lo), x)
    if "exclusiveMaximum" in schema:
        x = int(schema["exclusiveMaximum"]) - 1
        hi = x if hi is None else min(int(hi), x)
    return (None if lo is None else int(lo)), (None if hi is None else int(hi))


def _converter():
    try:
        from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConfigError("grammar constraints need llama-cpp-python: "
                          "pip install 'gemmakit[llamacpp]'") from e

    class Converter(SchemaConverter):
        """The library's converter plus integer bounds and strict-JSON strings."""

        def visit(self, schema: dict[str, Any], name: str) -> str:
            if schema.get("type") == "integer" and any(
                    k in schema for k in ("minimum", "maximum", "exclusiveMinimum",
                                          "exclusiveMaximum")):
                rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
                lo, hi = _int_bounds(schema)
                return self._add_rule(rule_name, int_range_rule(lo, hi) + " space")
            return super().visit(schema, name)

        def _add_primitive(self, name: str, rule: Any) -> str:
            if name == "char":
                rule = type(rule)(_CHAR_RULE, [])
            return super()._add_primitive(name, rule)

    return Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def schema_to_gbnf(schema: dict[str, Any]) -> str:
    """Compile a checked JSON schema into GBNF (raises SchemaError on what cannot compile)."""
    conv = _converter()
    try:
        resolved = conv.resolve_refs(copy.deepcopy(schema), "")
        conv.visit(resolved, "")
        grammar = conv.format_grammar()
    except (ValueError, AssertionError, KeyError, TypeError, RecursionError) as e:
        raise SchemaError(f"cannot be compiled to a grammar: {str(e)[:200]}") from None
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise SchemaError(f"the grammar it compiles to is larger than {MAX_GRAMMAR_BYTES} bytes")
    _parse_check(grammar)
    return grammar


def _parse_check(grammar: str) -> None:
    """Have llama.cpp's own grammar parser read the grammar (no model needed)."""
    try:
        from gemmakit.engines.llamacpp import _lib  # routes llama.cpp's log lines to logging
    except ImportError:  # pragma: no cover - the engine that would use it is not installed
        return
    try:
        llama_cpp = _lib()
    except ConfigError:  # pragma: no cover - llama-cpp-python is not installed
        return
    sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode(), b"root")
    if not sampler:
        raise SchemaError("llama.cpp's grammar parser refused the compiled grammar")
    llama_cpp.llama_sampler_free(sampler)


# --- the two kinds of constraint --------------------------------------------------------------
def _rebase_refs(node: Any, prefix: str) -> Any:
    """Rewrite local refs "#/x" of a sub-schema moved to "#/$defs/<name>" (prefix)."""
    if isinstance(node, list):
        return [_rebase_refs(v, prefix) for v in node]
    if isinstance(node, dict):
        out = {k: _rebase_refs(v, prefix) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            out["$ref"] = prefix + ref[1:].rstrip("/") if ref not in ("#", "#/") else prefix
        return out
    return node


def call_schema(tools: Sequence[ToolSpec], parallel: bool) -> dict[str, Any]:
    """The JSON schema of the reply to a forced call: one call object, or a non-empty list."""
    defs: dict[str, Any] = {}
    alts = []
    for i, t in enumerate(tools):
        key = f"args{i}"
        defs[key] = _rebase_refs(t.parameters, f"#/$defs/{key}")
        alts.append({"type": "object",
                     "properties": {"name": {"const": t.name},
                                    "parameters": {"$ref": f"#/$defs/{key}"}},
                     "required": ["name", "parameters"]})
    one = alts[0] if len(alts) == 1 else {"anyOf": alts}
    root = {"anyOf": [one, {"type": "array", "items": one, "minItems": 1,
                            "maxItems": MAX_CALLS_PER_REPLY}]} if parallel else one
    return {**root, "$defs": defs}


def tool_call_constraint(tools: Sequence[ToolSpec], parallel: bool) -> Constraint:
    """A grammar forcing a call to one of `tools` (each already checked by ToolSpec)."""
    try:
        grammar = schema_to_gbnf(call_schema(tools, parallel))
    except SchemaError:
        # Name the tool: compile each alone to find the one the grammar cannot hold.
        for i, t in enumerate(tools):
            try:
                schema_to_gbnf(t.parameters)
            except SchemaError as e:
                raise InvalidRequestError(f"tool '{t.name}': parameters schema {e}",
                                          param=f"tools[{i}].function.parameters",
                                          code="invalid_tool_schema") from None
        raise InvalidRequestError("the tools' schemas cannot be compiled to a grammar.",
                                  param="tools", code="invalid_tool_schema") from None
    return Constraint("grammar", grammar)


JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


def response_format_schema(response_format: Any) -> dict[str, Any] | None:
    """The schema a `response_format` asks for: None for text, {"type": "object"} for
    json_object, the given schema for json_schema. Bad values are 400s on response_format."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequestError("response_format must be an object.", param="response_format")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return JSON_OBJECT_SCHEMA
    if kind != "json_schema":
        raise InvalidRequestError(f"response_format type '{kind}' is not supported (text, "
                                  "json_object, json_schema).", param="response_format.type")
    js = response_format.get("json_schema")
    if not isinstance(js, dict) or not isinstance(js.get("name", ""), str):
        raise InvalidRequestError("response_format.json_schema must be an object with a name "
                                  "and a schema.", param="response_format.json_schema")
    schema = js.get("schema")
    if schema is None:
        schema = {"type": "object"}
    label = js.get("name") or "response"
    try:
        check_schema(schema)
    except SchemaError as e:
        where = f" at {e.path}" if e.path else ""
        raise InvalidRequestError(f"response_format schema '{label}' is invalid or "
                                  f"unsupported{where}: {e}",
                                  param="response_format.json_schema.schema",
                                  code="invalid_schema") from None
    return schema


def json_constraint(schema: dict[str, Any], label: str = "response") -> Constraint:
    try:
        return Constraint("grammar", schema_to_gbnf(schema))
    except SchemaError as e:
        raise InvalidRequestError(f"response_format schema '{label}' {e}",
                                  param="response_format.json_schema.schema",
                                  code="invalid_schema") from None
