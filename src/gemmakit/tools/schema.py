"""Tool definitions: checked once, at the edge.

`ToolSpec.from_openai` turns one OpenAI `tools[i]` entry into a checked spec: the name is a valid
identifier, the parameters are a JSON schema that `jsonschema` accepts, that stays inside the subset
gemmakit can enforce with a grammar (see docs/tools.md), and that is small enough. Every problem is
an `InvalidRequestError` (400) naming the tool and its `param` path, never a crashed worker.

`tool` builds a spec from a Python function's signature (pydantic does the type -> schema work) and
its docstring (summary + Google-style ``Args:`` section).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gemmakit.errors import InvalidRequestError

MAX_SCHEMA_BYTES = 64 * 1024
"""Largest accepted parameters schema of one tool (serialized JSON); a 1 MB schema is refused."""
MAX_SCHEMA_DEPTH = 32
MAX_TOOLS = 128
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")

# Keywords with no effect on validity (annotations) and keywords the grammar enforces exactly.
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
                "deprecated", "readOnly", "writeOnly", "$defs", "definitions"}
_ENFORCED = {"type", "properties", "required", "additionalProperties", "items", "prefixItems",
             "minItems", "maxItems", "enum", "const", "anyOf", "$ref", "pattern", "minLength",
             "maxLength", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
_TYPES = {"string", "number", "integer", "boolean", "null", "object", "array"}
_FORMATS = {"date", "time", "date-time", "uuid"}
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


class SchemaError(ValueError):
    """A schema outside the supported subset; `path` is the JSON-pointer-ish location in it."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class ToolSpec:
    """One function the model may call: name, description, JSON schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object",
                                                                "properties": {}})
    function: Callable[..., Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_openai(cls, entry: Any, index: int) -> ToolSpec:
        param = f"tools[{index}]"
        if not isinstance(entry, dict) or entry.get("type", "function") != "function":
            raise InvalidRequestError(f"{param}: only tools of type 'function' are supported.",
                                      param=f"{param}.type")
        fn = entry.get("function")
        if not isinstance(fn, dict):
            raise InvalidRequestError(f"{param}: 'function' must be an object.",
                                      param=f"{param}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InvalidRequestError(
                f"{param}: function name must match [A-Za-z_][A-Za-z0-9_.-]{{0,63}}.",
                param=f"{param}.function.name")
        desc = fn.get("description") or ""
        if not isinstance(desc, str):
            raise InvalidRequestError(f"tool '{name}': description must be a string.",
                                      param=f"{param}.function.description")
        params = fn.get("parameters")
        if params is None or params == {}:  # no parameters
            params = {"type": "object", "properties": {}}
        spec = cls(name, desc, params)
        try:
            check_schema(params, root_is_object=True)
        except SchemaError as e:
            where = f" at {e.path}" if e.path else ""
            raise InvalidRequestError(f"tool '{name}': invalid or unsupported parameters "
                                      f"schema{where}: {e}", param=f"{param}.function.parameters",
                                      code="invalid_tool_schema") from None
        return spec

    def openai(self) -> dict[str, Any]:
        """The OpenAI `tools` entry for this spec."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}

    def declaration(self) -> dict[str, Any]:
        """What the model is shown: name, description, parameters (Google's declaration shape)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["parameters"] = self.parameters
        return out

    def validate(self, arguments: Any) -> str | None:
        """None if `arguments` validate against the schema, else the first error's message."""
        from jsonschema import Draft202012Validator

        err = next(iter(Draft202012Validator(self.parameters).iter_errors(arguments)), None)
        if err is None:
            return None
        where = "/".join(str(p) for p in err.absolute_path)
        return f"{where}: {err.message}" if where else err.message


def parse_tools(entries: Any) -> list[ToolSpec]:
    if not isinstance(entries, list):
        raise InvalidRequestError("'tools' must be a list.", param="tools")
    if len(entries) > MAX_TOOLS:
        raise InvalidRequestError(f"at most {MAX_TOOLS} tools are supported.", param="tools")
    specs = [ToolSpec.from_openai(e, i) for i, e in enumerate(entries)]
    seen: set[str] = set()
    for i, s in enumerate(specs):
        if s.name in seen:
            raise InvalidRequestError(f"tool '{s.name}' is declared twice.",
                                      param=f"tools[{i}].function.name")
        seen.add(s.name)
    return specs


# --- the supported subset ---------------------------------------------------------------------
def check_schema(schema: Any, *, root_is_object: bool = False) -> None:
    """Raise SchemaError unless `schema` is a valid JSON schema inside the enforced subset."""
    try:
        size = len(json.dumps(schema))
    except (TypeError, ValueError):
        raise SchemaError("the schema is not JSON") from None
    if size > MAX_SCHEMA_BYTES:
        raise SchemaError(f"the schema is {size} bytes; the limit is {MAX_SCHEMA_BYTES}")
    if not isinstance(schema, dict):
        raise SchemaError("a schema must be an object")
    from jsonschema import Draft202012Validator, FormatChecker
    from jsonschema.exceptions import SchemaError as JsonSchemaError

    try:
        Draft202012Validator.check_schema(schema, format_checker=FormatChecker())
    except JsonSchemaError as e:
        raise SchemaError(e.message, "/".join(str(p) for p in e.absolute_path)) from None
    if root_is_object and schema.get("type") != "object":
        raise SchemaError("function parameters must be a schema of type 'object'")
    for path, node in _walk(schema, ""):
        _check_node(node, path)
    _check_refs(schema)


def _walk(node: dict[str, Any], path: str, depth: int = 0) -> Iterator[tuple[str, dict]]:
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels", path)
    yield path, node
    for key in ("properties", "$defs", "definitions"):
        for k, sub in (node.get(key) or {}).items():
            yield from _walk(sub, f"{path}/{key}/{k}", depth + 1)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _walk(node[key], f"{path}/{key}", depth + 1)
    for key in ("prefixItems", "anyOf"):
        for i, sub in enumerate(node.get(key) or []):
            yield from _walk(sub, f"{path}/{key}/{i}", depth + 1)


def _check_node(node: dict[str, Any], path: str) -> None:
    unknown = sorted(k for k in node if k not in _ENFORCED and k not in _ANNOTATIONS)
    if unknown:
        raise SchemaError(f"keyword '{unknown[0]}' is not supported (it cannot be enforced "
                          "during generation)", path)
    types = node.get("type")
    tlist = types if isinstance(types, list) else [types] if types else []
    bad = [t for t in tlist if t not in _TYPES]
    if bad:
        raise SchemaError(f"unknown type '{bad[0]}'", path)
    if "pattern" in node:
        pat = node["pattern"]
        try:
            re.compile(pat)
        except re.error as e:
            raise SchemaError(f"invalid pattern: {e}", path) from None
        if not (pat.startswith("^") and pat.endswith("$")):
            raise SchemaError("a pattern must be anchored: start with '^' and end with '$'", path)
    if "format" in node and node["format"] not in _FORMATS:
        raise SchemaError(f"format '{node['format']}' is not supported (supported: "
                          f"{', '.join(sorted(_FORMATS))})", path)
    if any(b in node for b in _BOUNDS):
        if tlist != ["integer"]:
            raise SchemaError("numeric bounds are enforced for type 'integer' only", path)
        for b in _BOUNDS:
            if b in node and node[b] != int(node[b]):
                raise SchemaError(f"'{b}' of an integer must be a whole number", path)
    if "pattern" in node and ("minLength" in node or "maxLength" in node):
        raise SchemaError("'pattern' cannot be combined with minLength/maxLength", path)
    if "pattern" in node and "format" in node:
        raise SchemaError("'pattern' cannot be combined with 'format'", path)
    combined = [k for k in ("enum", "const", "anyOf", "$ref") if k in node]
    if len(combined) > 1:
        raise SchemaError(f"'{combined[0]}' cannot be combined with '{combined[1]}'", path)
    if combined and combined[0] in ("anyOf", "$ref") and len(set(node) & _ENFORCED) > 1:
        extra = sorted((set(node) & _ENFORCED) - {combined[0]})
        raise SchemaError(f"'{combined[0]}' cannot be combined with '{extra[0]}'", path)
    if isinstance(node.get("items"), list):
        raise SchemaError("'items' must be a schema (use prefixItems for tuples)", path)


def _check_refs(schema: dict[str, Any]) -> None:
    """Local refs only; a chain of refs that loops without consuming input is refused."""
    def target(ref: str) -> dict[str, Any]:
        if not ref.startswith("#"):
            raise SchemaError(f"only local $ref ('#/...') is supported, got '{ref[:64]}'")
        node: Any = schema
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise SchemaError(f"$ref '{ref[:64]}' points nowhere")
            node = node[part]
        if not isinstance(node, dict):
            raise SchemaError(f"$ref '{ref[:64]}' is not a schema")
        return node

    for path, node in _walk(schema, ""):
        try:
            _follow(node, target, [])
        except SchemaError as e:
            raise SchemaError(str(e), path) from None


def _follow(node: dict[str, Any], target: Callable[[str], dict], seen: list[str]) -> None:
    while "$ref" in node or "anyOf" in node:
        if "anyOf" in node:
            for alt in node["anyOf"]:
                _follow(alt, target, [*seen])
            return
        ref = node["$ref"]
        if ref in seen:
            raise SchemaError(f"$ref loop: {' -> '.join([*seen, ref])}")
        seen.append(ref)
        node = target(ref)


# --- Python functions -> specs -----------------------------------------------------------------
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_SECTION = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _docstring_parts(doc: str | None) -> tuple[str, dict[str, str]]:
    """(summary, {arg: description}) from a Google-style docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    args: dict[str, str] = {}
    i = 0
    while i < len(lines) and not _ARGS_HEADER.match(lines[i]) and not (
            _SECTION.match(lines[i]) and summary):
        summary.append(lines[i])
        i += 1
    if i < len(lines) and _ARGS_HEADER.match(lines[i]):
        i += 1
        current = None
        while i < len(lines) and not _SECTION.match(lines[i]):
            m = _ARG_LINE.match(lines[i])
            indent = len(lines[i]) - len(lines[i].lstrip())
            if m and (current is None or indent <= args.get("__indent__", indent)):
                current = m.group(1).lstrip("*")
                args[current] = m.group(2).strip()
                args["__indent__"] = indent  # type: ignore[assignment]
            elif current and lines[i].strip():
                args[current] += " " + lines[i].strip()
            i += 1
    args.pop("__indent__", None)
    return " ".join(s.strip() for s in summary if s.strip()), args


def spec_from_function(fn: Callable[..., Any], *, name: str | None = None,
                       description: str | None = None) -> ToolSpec:
    """Build a ToolSpec from type hints (through pydantic) and the docstring."""
    from pydantic import ConfigDict, Field, create_model

    summary, arg_docs = _docstring_parts(fn.__doc__)
    sig = inspect.signature(fn)
    hints = inspect.get_annotations(fn, eval_str=True)
    fields: dict[str, Any] = {}
    for pname, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{fn.__name__}: *args/**kwargs cannot be described as a tool")
        if pname not in hints:
            raise TypeError(f"{fn.__name__}: parameter '{pname}' needs a type hint")
        default = ... if p.default is p.empty else p.default
        fields[pname] = (hints[pname], Field(default, description=arg_docs.get(pname)))
    model = create_model(f"{fn.__name__}_args", __config__=ConfigDict(extra="forbid"), **fields)
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema.setdefault("properties", {})
    try:
        check_schema(schema, root_is_object=True)
    except SchemaError as e:
        raise TypeError(f"{fn.__name__}: its parameters cannot be a tool schema: {e}") from None
    return ToolSpec(name or fn.__name__, description if description is not None else summary,
                    schema, fn)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         description: str | None = None) -> Any:
    """Decorator: mark a function as a tool. ``@tool`` or ``@tool(name=..., description=...)``.

    The function stays callable as before; its spec is at ``fn.__gemmakit_tool__``."""
    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        f.__gemmakit_tool__ = spec_from_function(f, name=name, description=description)  # type: ignore[attr-defined]
        return f

    return wrap(fn) if fn is not None else wrap


def as_spec(obj: Any) -> ToolSpec:
    """A ToolSpec from a spec, a decorated function, a plain typed function or an OpenAI dict."""
    if isinstance(obj, ToolSpec):
        return obj
    if callable(obj):
        return getattr(obj, "__gemmakit_tool__", None) or spec_from_function(obj)
    if isinstance(obj, dict):
        return ToolSpec.from_openai(obj, 0)
    raise TypeError(f"not a tool: {obj!r}")
