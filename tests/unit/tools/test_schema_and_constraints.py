"""Tool specs, the supported JSON-schema subset, and grammar compilation.

Grammars are parsed by llama.cpp's own grammar parser (no model needed); the integer-range rules
are checked exhaustively against a regex translation of themselves."""

from __future__ import annotations

import re
from typing import Literal

import pytest

from gemmakit.errors import InvalidRequestError
from gemmakit.tools.constraints import int_range_rule, schema_to_gbnf, tool_call_constraint
from gemmakit.tools.gbnf import Alt, Cls, parse_gbnf
from gemmakit.tools.schema import ToolSpec, parse_tools, spec_from_function, tool


def fn(params, name="f"):
    return {"type": "function", "function": {"name": name, "parameters": params}}


OBJ = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


@pytest.mark.parametrize(("params", "needle"), [
    ({"type": "object", "properties": {"a": {"type": "strng"}}}, "properties/a/type"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^[a-$"}}}, "regex"),
    ({"type": "object", "properties": {"a": {"$ref": "#/properties/b"},
                                       "b": {"$ref": "#/properties/a"}}}, "$ref loop"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "points nowhere"),
    ({"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}}, "local"),
    ({"type": "object", "properties": {"a": {"type": "string",
                                             "description": "x" * 1_000_000}}}, "limit"),
    ({"type": "string"}, "type 'object'"),
])
def test_bad_or_unsupported_schema_is_a_400_naming_the_tool(params, needle):
    with pytest.raises(InvalidRequestError) as e:
        parse_tools([fn(params, name="lookup")])
    assert e.value.status == 400
    assert "tool 'lookup'" in e.value.message
    assert needle in e.value.message
    assert e.value.param == "tools[0].function.parameters"


@pytest.mark.parametrize(("params", "needle"), [
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "'not' at /properties/a"),
    ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}},
     "'uniqueItems'"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "uri"}}}, "format: uri"),
    ({"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 5}}}, "multipleOf"),
    ({"type": "object", "properties": {"a": {"type": "string", "maxLenght": 5}}}, "'maxLenght'"),
])
def test_keywords_the_grammar_cannot_enforce_are_refused_only_when_strict(params, needle):
    parse_tools([fn(params, name="lookup")])  # accepted: checked after generation
    strict = {"type": "function", "function": {"name": "lookup", "parameters": params,
                                               "strict": True}}
    with pytest.raises(InvalidRequestError) as e:
        parse_tools([strict])
    assert needle in e.value.message and "strict" in e.value.message
    assert e.value.param == "tools[0].function.parameters"


def test_deeply_nested_schema_is_refused():
    node: dict = {"type": "string"}
    for _ in range(40):
        node = {"type": "object", "properties": {"a": node}}
    with pytest.raises(InvalidRequestError, match="deeper"):
        parse_tools([fn(node)])


@pytest.mark.parametrize(("entries", "param"), [
    ("nope", "tools"),
    ([{"type": "retrieval"}], "tools[0].type"),
    ([fn(OBJ, name="has space")], "tools[0].function.name"),
    ([fn(OBJ), fn(OBJ)], "tools[1].function.name"),
])
def test_bad_tool_entries(entries, param):
    with pytest.raises(InvalidRequestError) as e:
        parse_tools(entries)
    assert e.value.param == param


def test_validate_reports_the_path():
    spec = ToolSpec.from_openai(fn(OBJ), 0)
    assert spec.validate({"a": "x"}) is None
    assert "'a' is a required property" in spec.validate({})
    assert spec.validate({"a": 3}).startswith("a:")


def _as_regex(rule: str) -> re.Pattern:
    return re.compile(rule.replace('"', "").replace(" ", ""))


@pytest.mark.parametrize(("lo", "hi"), [(1, 10), (-5, 120), (0, None), (None, 0), (-250, -3),
                                        (7, 7), (13, 287), (None, None), (-1, 1), (10, 30)])
def test_int_range_rule_matches_exactly_the_range(lo, hi):
    rx = _as_regex(int_range_rule(lo, hi))
    for n in range(-400, 400):
        inside = (lo is None or n >= lo) and (hi is None or n <= hi)
        assert bool(rx.fullmatch(str(n))) == inside, n
    assert not rx.fullmatch("007") and not rx.fullmatch("-0") or lo is None


def test_grammar_compiles_and_llama_cpp_accepts_it():
    g = tool_call_constraint(parse_tools([fn(OBJ, "a"), fn({
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9},
                                         "e": {"enum": ["x", "y"]},
                                         "l": {"type": "array", "items": {"$ref": "#/$defs/p"}}},
        "$defs": {"p": {"type": "object", "properties": {"q": {"type": "boolean"}}}}}, "b")]),
        parallel=True).value
    assert '"\\"a\\""' in g and '"\\"b\\""' in g
    char = parse_gbnf(g)["char"]  # strings cannot hold raw control characters
    assert isinstance(char, Alt) and isinstance(char.items[0], Cls)
    assert char.items[0].ranges[0][0] == 0x20


def test_recursive_schema_compiles():
    tree = {"type": "object", "properties": {
        "value": {"type": "integer"},
        "children": {"type": "array", "items": {"$ref": "#"}}}, "required": ["value"]}
    # A root reference ("#") is rebased when the schema is placed inside the call grammar.
    assert "children" in tool_call_constraint(parse_tools([fn(tree)]), parallel=False).value
    node = {"type": "object", "properties": {"v": {"type": "integer"},
                                             "next": {"anyOf": [{"$ref": "#/$defs/n"},
                                                                {"type": "null"}]}}}
    assert "next" in schema_to_gbnf({"$ref": "#/$defs/n", "$defs": {"n": node}})


class TestToolDecorator:
    def test_schema_from_hints_and_docstring(self):
        @tool
        def book(city: str, nights: int, kind: Literal["hotel", "hostel"] = "hotel",
                 tags: list[str] | None = None) -> str:
            """Book a room.

            Args:
                city: Where to stay.
                nights: How many nights,
                    at least one.
                kind: Type of place.
                tags: Wishes.
            """
            return city

        spec = book.__gemmakit_tool__
        assert spec.name == "book" and spec.description == "Book a room."
        props = spec.parameters["properties"]
        assert props["city"] == {"type": "string", "description": "Where to stay."}
        assert props["nights"]["type"] == "integer"
        assert props["nights"]["description"] == "How many nights, at least one."
        assert props["kind"]["enum"] == ["hotel", "hostel"]
        assert spec.parameters["required"] == ["city", "nights"]
        assert spec.validate({"city": "Rome", "nights": 2}) is None
        assert spec.validate({"city": "Rome", "nights": "2"}) is not None
        assert book("Rome", 1) == "Rome"  # still a plain function

    def test_untyped_parameter_is_refused(self):
        def f(x):  # no hint
            return x

        with pytest.raises(TypeError, match="type hint"):
            spec_from_function(f)
