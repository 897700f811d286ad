"""Tool definitions: checked once, at the edge.

`ToolSpec.from_openai` turns one OpenAI `tools[i]` entry into a checked spec: the name is a valid
identifier, the parameters are a JSON schema that `jsonschema` accepts and that is small enough.
`plan_schema` says what of it a grammar enforces during generation; the rest is checked with
jsonschema after generation (`validate_value`), or refused when the function (or the
response_format) is `strict` (see docs/tools.md). Every problem is an `InvalidRequestError` (400)
naming the tool and its `param` path, never a crashed worker.

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
from gemmakit.tools.gbnf import pattern_expr

MAX_SCHEMA_BYTES = 64 * 1024
"""Largest accepted parameters schema of one tool (serialized JSON); a 1 MB schema is refused."""
MAX_SCHEMA_DEPTH = 32
MAX_TOOLS = 128
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")

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
            check_schema(params, root_is_object=True, strict=fn.get("strict") is True)
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
        return validate_value(self.parameters, arguments)


def validate_value(schema: dict[str, Any], value: Any) -> str | None:
    """None if `value` is valid under `schema` (formats asserted), else the first error. This is
    the check every call and every structured answer passes before it leaves the server: it
    covers what the grammar enforces and what it leaves to this check (`SchemaPlan`)."""
    from jsonschema import Draft202012Validator

    checker = Draft202012Validator.FORMAT_CHECKER  # this draft's formats, not draft 3's "time"
    err = next(iter(Draft202012Validator(schema, format_checker=checker).iter_errors(value)),
               None)
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
# Keywords with no effect on validity (annotations); gemmakit ignores them.
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
                "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "discriminator",
                "contentEncoding", "contentMediaType", "contentSchema", "$anchor"}
# Keywords the grammar enforces (exactly, except in the cases `plan_schema` reports).
_ENFORCED = {"type", "properties", "required", "additionalProperties", "items", "prefixItems",
             "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref",
             "pattern", "minLength", "maxLength", "format", "minimum", "maximum",
             "exclusiveMinimum", "exclusiveMaximum"}
# Keywords the grammar cannot enforce: checked with jsonschema after generation.
_POST_CHECKED = {"multipleOf", "uniqueItems", "minProperties", "maxProperties", "not", "if",
                 "then", "else", "dependentRequired", "dependentSchemas", "dependencies",
                 "patternProperties", "propertyNames", "contains", "minContains", "maxContains",
                 "unevaluatedItems", "unevaluatedProperties", "$dynamicRef", "$recursiveRef",
                 "$dynamicAnchor", "$recursiveAnchor"}
_TYPES = {"string", "number", "integer", "boolean", "null", "object", "array"}
FORMATS = {"date": (10, 10), "time": (9, 18), "date-time": (20, 29), "uuid": (36, 36),
           "email": (5, None)}
"""Formats the grammar writes, with the lengths of what it writes (time: HH:MM:SS, optional
.mmm, then Z or an offset)."""
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_TYPE_KEYWORDS = {"object": ("properties", "required", "additionalProperties"),
                  "array": ("items", "prefixItems", "minItems", "maxItems"),
                  "string": ("pattern", "minLength", "maxLength", "format"),
                  "number": _BOUNDS}


class SchemaError(ValueError):
    """A schema outside the supported subset; `path` is the JSON-pointer-ish location in it."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class SchemaPlan:
    """What the grammar is compiled from, and what is left to the check after generation."""

    grammar: dict[str, Any]
    """The schema the grammar enforces: the request's, rewritten into the shapes the grammar
    compiler handles exactly, with what it cannot enforce left out."""
    post_checked: tuple[str, ...] = ()
    """'keyword at path' for each keyword the grammar does not enforce (checked after)."""
    unknown: tuple[str, ...] = ()
    """'keyword at path' for keywords JSON Schema does not define (no effect on validity)."""


def check_schema(schema: Any, *, root_is_object: bool = False,
                 strict: bool = False) -> SchemaPlan:
    """Raise SchemaError unless `schema` is a valid JSON schema gemmakit can generate under. With
    `strict`, a keyword the grammar cannot enforce (or one JSON Schema does not define) is refused
    too; without, it is checked after generation. Returns the plan."""
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
    plan = plan_schema(schema)
    if strict and (plan.post_checked or plan.unknown):
        what = (plan.post_checked or plan.unknown)[0]
        kind = ("cannot be enforced during generation" if plan.post_checked
                else "is not a JSON Schema keyword")
        raise SchemaError(f"keyword {what} {kind}; with strict: true it is refused (without "
                          "strict it is checked after generation)")
    return plan


def _subschemas(node: dict[str, Any], path: str) -> Iterator[tuple[str, Any]]:
    for key in ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas"):
        for k, sub in (node.get(key) or {}).items():
            yield f"{path}/{key}/{k}", sub
    for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains",
                "propertyNames", "unevaluatedItems", "unevaluatedProperties"):
        if key in node:
            yield f"{path}/{key}", node[key]
    for key in ("prefixItems", "anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(node.get(key) or []):
            yield f"{path}/{key}/{i}", sub


def _walk(node: Any, path: str, depth: int = 0) -> Iterator[tuple[str, dict]]:
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels", path)
    if not isinstance(node, dict):
        return  # a boolean schema
    yield path, node
    for sub_path, sub in _subschemas(node, path):
        yield from _walk(sub, sub_path, depth + 1)


def _check_node(node: dict[str, Any], path: str) -> None:
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
    for b in _BOUNDS:
        v = node.get(b)
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            raise SchemaError(f"'{b}' must be a finite number", path)


def _check_refs(schema: dict[str, Any]) -> None:
    """Local refs only; a chain of refs that loops without consuming input is refused."""
    def target(ref: str) -> dict[str, Any]:
        node = resolve_ref(schema, ref)
        if not isinstance(node, dict):
            raise SchemaError(f"$ref '{ref[:64]}' is not a schema")
        return node

    for path, node in _walk(schema, ""):
        try:
            _follow(node, target, [])
        except SchemaError as e:
            raise SchemaError(str(e), path) from None


def resolve_ref(root: dict[str, Any], ref: str) -> Any:
    """The subschema a local `$ref` points at (SchemaError for other refs)."""
    if not ref.startswith("#"):
        raise SchemaError(f"only local $ref ('#/...') is supported, got '{ref[:64]}'")
    node: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise SchemaError(f"$ref '{ref[:64]}' points nowhere")
    return node


def _follow(node: dict[str, Any], target: Callable[[str], dict], seen: list[str]) -> None:
    while any(k in node for k in ("$ref", "anyOf", "oneOf", "allOf")):
        for key in ("anyOf", "oneOf", "allOf"):
            for alt in node.get(key) or []:
                if isinstance(alt, dict):
                    _follow(alt, target, [*seen])
        if "$ref" not in node:
            return
        ref = node["$ref"]
        if ref in seen:
            raise SchemaError(f"$ref loop: {' -> '.join([*seen, ref])}")
        seen.append(ref)
        node = target(ref)


# --- what the grammar enforces ------------------------------------------------------------------
def plan_schema(schema: dict[str, Any]) -> SchemaPlan:
    """The schema the grammar is compiled from, and the keywords it leaves to the check after
    generation. Rewrites (each exact): boolean subschemas; `type` lists into `anyOf`; siblings of
    `anyOf`/`oneOf` and the members of `allOf` merged in; `oneOf` whose alternatives cannot both
    match (different types, different constants, a discriminating property) as `anyOf`; `enum`
    and `const` narrowed to the values the rest of their schema allows; a format's implied length
    instead of minLength/maxLength; required properties not declared under `properties` declared
    with the additionalProperties schema. Everything else outside the subset is left out of the
    grammar and reported in `post_checked` (or `unknown`)."""
    planner = _Planner(schema)
    grammar = planner.node(schema, "")
    if grammar is None:
        raise SchemaError("no value can satisfy the schema")
    return SchemaPlan(grammar, tuple(dict.fromkeys(planner.post)),
                      tuple(dict.fromkeys(planner.unknown)))


class _Planner:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.post: list[str] = []
        self.unknown: list[str] = []

    def later(self, keyword: str, path: str) -> None:
        self.post.append(f"'{keyword}' at {path or '/'}")

    def node(self, node: Any, path: str) -> dict[str, Any] | None:
        """The grammar schema of `node`, or None when no value satisfies it. Definitions stay
        where they are, so local refs still point at them."""
        res = self.shape(node, path)
        if res is None or not isinstance(node, dict):
            return res
        for key in ("$defs", "definitions"):
            if isinstance(node.get(key), dict):
                planned = {}
                for k, v in node[key].items():
                    g = self.node(v, f"{path}/{key}/{k}")
                    planned[k] = g if g is not None else {"enum": []}  # no value satisfies it
                res = {**res, key: planned}
        return res

    def shape(self, node: Any, path: str) -> dict[str, Any] | None:
        if node is True:
            return {}
        if node is False:
            return None
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k in _ANNOTATIONS:
                continue
            if k in _POST_CHECKED:
                self.later(k, path)
            elif k in _ENFORCED:
                out[k] = v
            else:
                self.unknown.append(f"'{k}' at {path or '/'}")
        for key in ("allOf", "anyOf", "oneOf"):
            if key in out:
                return self.combine(out, key, path)
        if isinstance(out.get("type"), list):
            types = out.pop("type")
            if len(types) == 1:
                out["type"] = types[0]
            else:
                return self.node({"anyOf": [{**out, "type": t} for t in types]}, path)
        if "$ref" in out:
            extra = sorted(k for k in out if k != "$ref")
            for k in extra:
                self.later(k, path)  # the grammar follows the reference only
            return {"$ref": out["$ref"]}
        if "enum" in out or "const" in out:
            return self.constants(out, path)
        if "type" not in out:  # infer it from the keywords (narrower, so still exact)
            for t, keys in _TYPE_KEYWORDS.items():
                if any(k in out for k in keys):
                    out["type"] = t
                    break
        kind = out.get("type")
        if kind == "object":
            return self.object(out, path)
        if kind == "array":
            return self.array(out, path)
        if kind == "string":
            return self.string(out, path)
        if kind in ("integer", "number"):
            return self.number(out, path)
        return out

    def combine(self, out: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
        members = out.pop(key)
        if key == "allOf":
            merged: dict[str, Any] = dict(out)
            for m in members:
                m = self.deref(m)
                if m is None:
                    return None
                if not _merge_into(merged, m):
                    self.later("allOf", path)  # conflicting members: the first one's value
            return self.node(merged, path)
        alts = []
        for i, m in enumerate(members):
            m_out = {} if m is True else dict(m) if isinstance(m, dict) else m
            if isinstance(m_out, dict) and out:
                if "$ref" in m_out and any(k in _ENFORCED for k in out):
                    m_out = self.deref(m_out)
                if m_out is not None and not _merge_into(m_out, out):
                    self.later(key, path)
            sub = self.node(m_out, f"{path}/{key}/{i}") if m_out is not None else None
            if sub is not None:
                alts.append(sub)
        if not alts:
            return None
        if key == "oneOf" and not _pairwise_disjoint(alts, self.root):
            self.later("oneOf", path)  # the grammar allows a value two alternatives match
        return alts[0] if len(alts) == 1 else {"anyOf": alts}

    def deref(self, node: Any) -> Any:
        """A member with only a $ref (and annotations), replaced by its target."""
        seen = 0
        while isinstance(node, dict) and "$ref" in node and seen < MAX_SCHEMA_DEPTH:
            rest = {k: v for k, v in node.items() if k != "$ref" and k not in _ANNOTATIONS}
            target = resolve_ref(self.root, node["$ref"])
            if rest:
                merged = dict(target) if isinstance(target, dict) else target
                if isinstance(merged, dict):
                    _merge_into(merged, rest)
                return merged
            node = target
            seen += 1
        return node

    def constants(self, out: dict[str, Any], path: str) -> dict[str, Any] | None:
        values = [out["const"]] if "const" in out else list(out["enum"])
        if "const" in out and "enum" in out:
            values = [v for v in values if any(_same(v, e) for e in out["enum"])]
        rest = {k: v for k, v in out.items() if k not in ("enum", "const")}
        if rest:
            schema = {**rest, "$defs": self.root.get("$defs", {}),
                      "definitions": self.root.get("definitions", {})}
            values = [v for v in values if validate_value(schema, v) is None]
        if not values:
            return None
        return {"enum": values}

    def object(self, out: dict[str, Any], path: str) -> dict[str, Any] | None:
        props: dict[str, Any] = {}
        required = list(dict.fromkeys(out.get("required", [])))
        extra = out.get("additionalProperties", True)
        for name, sub in (out.get("properties") or {}).items():
            g = self.node(sub, f"{path}/properties/{name}")
            if g is None:
                if name in required:
                    return None
                continue  # a property no value satisfies: it is never written
            props[name] = g
        for name in required:
            if name not in props:
                if extra is False:
                    return None
                g = self.node(extra, f"{path}/additionalProperties")
                if g is None:
                    return None
                props[name] = g
        res: dict[str, Any] = {"type": "object", "properties": props,
                               "required": [n for n in required if n in props]}
        if extra is not False and "properties" not in out and "additionalProperties" not in out:
            res["additionalProperties"] = {}
        elif extra is not False and "additionalProperties" in out:
            g = self.node(extra, f"{path}/additionalProperties")
            if g is not None:
                res["additionalProperties"] = g
        return res

    def array(self, out: dict[str, Any], path: str) -> dict[str, Any] | None:
        res: dict[str, Any] = {"type": "array"}
        prefix = []
        for i, sub in enumerate(out.get("prefixItems") or []):
            g = self.node(sub, f"{path}/prefixItems/{i}")
            if g is None:
                break  # no array reaches past an unsatisfiable position
            prefix.append(g)
        lo, hi = out.get("minItems", 0), out.get("maxItems")
        if len(prefix) < len(out.get("prefixItems") or []):
            hi = len(prefix) if hi is None else min(hi, len(prefix))
        items = out.get("items", True)
        g_items = self.node(items, f"{path}/items")
        if g_items is None:
            hi = len(prefix) if hi is None else min(hi, len(prefix))
        if hi is not None and lo > hi:
            return None
        if prefix:
            res["prefixItems"] = prefix
        if g_items is not None:
            res["items"] = g_items
        else:
            res["items"] = False
        if lo:
            res["minItems"] = lo
        if hi is not None:
            res["maxItems"] = hi
        return res

    def string(self, out: dict[str, Any], path: str) -> dict[str, Any] | None:
        res: dict[str, Any] = {"type": "string"}
        lo, hi = out.get("minLength", 0), out.get("maxLength")
        if hi is not None and lo > hi:
            return None
        fmt = out.get("format")
        if fmt is not None and fmt not in FORMATS:
            self.later(f"format: {fmt}", path)
            fmt = None
        if "pattern" in out and pattern_expr(out["pattern"]) is None:
            self.later("pattern", path)  # lookaround, backreferences, flags...
            out = {k: v for k, v in out.items() if k != "pattern"}
        if "pattern" in out:
            res["pattern"] = out["pattern"]
            if fmt is not None:
                self.later("format", path)  # the pattern is what the grammar follows
            if lo or hi is not None:
                self.later("minLength/maxLength", path)
            return res
        if fmt is not None:
            res["format"] = fmt
            f_lo, f_hi = FORMATS[fmt]
            if (f_hi is not None and f_hi < lo) or (hi is not None and f_lo > hi):
                return None
            if f_lo < lo or (hi is not None and (f_hi is None or f_hi > hi)):
                self.later("minLength/maxLength", path)  # the format's own lengths are written
            return res
        if lo:
            res["minLength"] = lo
        if hi is not None:
            res["maxLength"] = hi
        return res

    def number(self, out: dict[str, Any], path: str) -> dict[str, Any] | None:
        res = {k: out[k] for k in ("type", *_BOUNDS) if k in out}
        return res


def _same(a: Any, b: Any) -> bool:
    """Equality of JSON values as JSON Schema sees it (1 == 1.0, but true != 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _merge_into(dst: dict[str, Any], src: dict[str, Any]) -> bool:
    """Add `src`'s keywords to `dst` (both apply); False when they conflict (dst's value kept)."""
    ok = True
    for k, v in src.items():
        if k in _ANNOTATIONS:
            continue
        if k not in dst:
            dst[k] = v
        elif k == "required":
            dst[k] = list(dict.fromkeys([*dst[k], *v]))
        elif k == "properties":
            props = dict(dst[k])
            for name, sub in v.items():
                if name in props and props[name] != sub:
                    ok = False
                props.setdefault(name, sub)
            dst[k] = props
        elif dst[k] != v:
            ok = False
    return ok


def _value_types(node: dict[str, Any], root: dict[str, Any]) -> set[str] | None:
    """The JSON types a grammar schema allows (None: any); integer counts as number too."""
    if "$ref" in node:
        try:
            target = resolve_ref(root, node["$ref"])
        except SchemaError:
            return None
        return _value_types(target, root) if isinstance(target, dict) else None
    if "anyOf" in node:
        out: set[str] = set()
        for alt in node["anyOf"]:
            t = _value_types(alt, root)
            if t is None:
                return None
            out |= t
        return out
    if "enum" in node:
        return {_json_type(v) for v in node["enum"]} | (
            {"number"} if any(_json_type(v) == "integer" for v in node["enum"]) else set())
    t = node.get("type")
    if t is None:
        return None
    return {t, "number"} if t == "integer" else {t}


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer()):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _constants(node: dict[str, Any], root: dict[str, Any]) -> list[Any] | None:
    if "$ref" in node:
        try:
            node = resolve_ref(root, node["$ref"])
        except SchemaError:
            return None
    if isinstance(node, dict) and "const" in node:
        return [node["const"]]
    if isinstance(node, dict) and "enum" in node:
        return list(node["enum"])
    return None


def _disjoint(a: dict[str, Any], b: dict[str, Any], root: dict[str, Any]) -> bool:
    ta, tb = _value_types(a, root), _value_types(b, root)
    if ta is not None and tb is not None and not (ta & tb):
        return True
    ca, cb = _constants(a, root), _constants(b, root)
    if ca is not None and cb is not None:
        return not any(_same(x, y) for x in ca for y in cb)
    # Objects told apart by a property both require, with constants that differ.
    oa, ob = _deref_object(a, root), _deref_object(b, root)
    if oa is None or ob is None:
        return False
    for name in set(oa.get("required", [])) & set(ob.get("required", [])):
        pa, pb = (oa.get("properties") or {}).get(name), (ob.get("properties") or {}).get(name)
        if isinstance(pa, dict) and isinstance(pb, dict):
            ka, kb = _constants(pa, root), _constants(pb, root)
            if ka is not None and kb is not None and not any(_same(x, y) for x in ka
                                                             for y in kb):
                return True
    return False


def _deref_object(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any] | None:
    for _ in range(MAX_SCHEMA_DEPTH):
        if "$ref" not in node:
            break
        try:
            target = resolve_ref(root, node["$ref"])
        except SchemaError:
            return None
        if not isinstance(target, dict):
            return None
        node = target
    return node if node.get("type") == "object" or "properties" in node else None


def _pairwise_disjoint(alts: list[dict[str, Any]], root: dict[str, Any]) -> bool:
    return all(_disjoint(alts[i], alts[j], root) for i in range(len(alts))
               for j in range(i + 1, len(alts)))


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
            if m and (current is None or indent <= int(args.get("__indent__", indent))):
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
