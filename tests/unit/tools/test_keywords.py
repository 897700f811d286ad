"""The JSON-Schema keywords structured-output libraries emit, enforced in the grammar — or, where a
grammar cannot, checked with jsonschema after generation (and refused with `strict: true`).

Each keyword is checked two ways: its rule against an independent oracle (Python's float parsing,
datetime, uuid, jsonschema) over many candidate strings, and random texts of the compiled grammar
validating against the schema."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import uuid
from typing import Any

import pytest

from gemmakit.errors import InvalidRequestError
from gemmakit.tools.chat import ToolPlan
from gemmakit.tools.constraints import compile_schema, int_range_rule, number_range_rule
from gemmakit.tools.schema import SchemaError, check_schema, parse_tools, plan_schema, validate_value
from tests.unit.tools.grammars import grammar_regex, rule_regex, walk


def texts(schema: dict[str, Any], n: int = 150, budget: int = 400, seed: int = 0) -> list[str]:
    """Random texts of the schema's grammar (half of them as long as the budget lets them)."""
    g = compile_schema(schema, max_tokens=budget)
    rng = random.Random(seed)
    return [walk(g.text, rng, longest=k % 2 == 1)[0] for k in range(n)]


def all_valid(schema: dict[str, Any], **kw: Any) -> list[Any]:
    values = []
    for t in texts(schema, **kw):
        v = json.loads(t)
        assert validate_value(schema, v) is None, (t, validate_value(schema, v))
        values.append(v)
    return values


# --- numbers ----------------------------------------------------------------------------------
def _number_candidates() -> list[str]:
    out = set()
    for n in itertools.chain(range(-130, 131), (999, 1000, 123456789012345,
                                                1234567890123456, -1234567890123456)):
        out.add(str(n))
        for frac in ("0", "5", "25", "05", "95", "999", "001", "1", "09999999999999"):
            if n != 0 or True:
                out.add(f"{n}.{frac}")
    for s in ("0.1", "0.10000000000001", "0.09999999999999", "0.1000000000000001",
              "2.25", "2.2500000000001", "2.250", "-1.5", "-1.50", "-1.4999", "-1.5001", "99.95",
              "99.9500001", "99.94999", "0.001", "-0.001", "0.0011", "-0.0009", "1e3", "-0",
              "-0.0", "00", "01", "1.", ".5"):
        out.add(s)
    return sorted(out)


NUMBER_BOUNDS = [
    {"minimum": 0}, {"exclusiveMinimum": 0}, {"minimum": 0.5, "maximum": 99.95},
    {"minimum": -1.5, "maximum": 2.25}, {"exclusiveMaximum": 0.1}, {"exclusiveMinimum": 0.1},
    {"minimum": -0.001, "maximum": 0.001}, {"maximum": -2.5}, {"minimum": 1e-3},
    {"exclusiveMinimum": -1, "exclusiveMaximum": 1}, {"minimum": 1.0, "maximum": 3},
    {"minimum": 5, "exclusiveMinimum": 5}, {"maximum": 100, "exclusiveMaximum": 100.0},
]


@pytest.mark.parametrize("bounds", NUMBER_BOUNDS, ids=lambda b: json.dumps(b))
def test_number_bounds_match_exactly_what_jsonschema_accepts(bounds):
    rx = rule_regex(number_range_rule(bounds.get("minimum"), bounds.get("maximum"),
                                      exclusive_minimum=bounds.get("exclusiveMinimum"),
                                      exclusive_maximum=bounds.get("exclusiveMaximum")))
    schema = {"type": "number", **bounds}
    for s in _number_candidates():
        valid = validate_value(schema, json.loads(s)) is None if _is_json(s) else False
        canonical = _is_json(s) and not s.startswith("-0") and "e" not in s and \
            len(s.lstrip("-").replace(".", "").lstrip("0")) <= 15 and \
            len(s.partition(".")[2]) <= 6  # six decimals at most
        if rx.fullmatch(s):
            assert valid, f"{s} matches but jsonschema refuses it under {bounds}"
        elif canonical and valid:
            raise AssertionError(f"{s} is valid under {bounds} but the rule refuses it")


def _is_json(s: str) -> bool:
    try:
        json.loads(s)
    except ValueError:
        return False
    return not s.startswith(("00", "-00")) and s != "1." and not s.startswith(".")


def test_an_exclusive_bound_survives_float_parsing():
    """0.1000000000000000055 > 0.1 as decimals, but parses to 0.1: the rule writes at most 15
    significant digits, so what it keeps above a bound stays above it once parsed."""
    rng = random.Random(0)
    for bound in (0.1, 123456789.25, 0.30000000000000004, 1e15 + 0.5):
        rx = rule_regex(number_range_rule(exclusive_minimum=bound))
        head = repr(bound).split("e")[0]
        for _ in range(2000):
            digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 18)))
            s = head + digits if "." in head else head + "." + digits
            if rx.fullmatch(s):
                assert float(s) > bound, s


@pytest.mark.parametrize(("schema", "lo", "hi"), [
    ({"minimum": 0.5, "exclusiveMaximum": 10}, 1, 9),
    ({"exclusiveMinimum": -3.5, "maximum": 2.9}, -3, 2),
    ({"minimum": 1.0, "maximum": 4.0}, 1, 4),
    ({"exclusiveMinimum": 2, "exclusiveMaximum": 6}, 3, 5),
])
def test_integer_bounds_may_be_fractional(schema, lo, hi):
    full = {"type": "integer", **schema}
    check_schema(full)
    g = compile_schema(full)
    rx = grammar_regex(g.text)
    for n in range(-10, 15):
        assert bool(rx.fullmatch(str(n))) == (lo <= n <= hi), n


def test_pydantic_ge_on_a_float_is_accepted_and_enforced():
    """The issue's example: `population: float = Field(ge=0)`."""
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str
        population: float = Field(ge=0)

    schema = City.model_json_schema()
    assert schema["properties"]["population"] == {"minimum": 0, "title": "Population",
                                                  "type": "number"}
    plan = check_schema(schema, strict=True)
    assert not plan.post_checked
    for v in all_valid(schema):
        City.model_validate(v)


def test_int_range_rule_still_exact():
    rx = rule_regex(int_range_rule(-42, 1234))
    for n in range(-500, 2000):
        assert bool(rx.fullmatch(str(n))) == (-42 <= n <= 1234)


# --- formats ----------------------------------------------------------------------------------
def test_dates_are_calendar_dates():
    rx = grammar_regex(compile_schema({"type": "string", "format": "date"}).text)
    years = ["0000", "0001", "0004", "0096", "0100", "0400", "1900", "2000", "2023", "2024",
             "2100", "9999"]
    for y, m, d in itertools.product(years, range(0, 14), range(0, 33)):
        s = f"{y}-{m:02d}-{d:02d}"
        try:
            ok = dt.date.fromisoformat(s) is not None
        except ValueError:
            ok = False
        assert bool(rx.fullmatch(f'"{s}"')) == ok, s


def test_times_datetimes_uuids_emails():
    for v in all_valid({"type": "string", "format": "date-time"}, n=60):
        dt.datetime.fromisoformat(v)
    for v in all_valid({"type": "string", "format": "time"}, n=60):
        dt.time.fromisoformat(v)
    for v in all_valid({"type": "string", "format": "uuid"}, n=30):
        uuid.UUID(v)
    for v in all_valid({"type": "string", "format": "email"}, n=60):
        local, _, domain = v.partition("@")
        assert local and "." in domain and ".." not in v and not local.startswith(".")
        assert domain.rsplit(".", 1)[1].isalpha()


def test_an_unknown_format_is_checked_after_generation():
    plan = check_schema({"type": "string", "format": "uri"})
    assert plan.post_checked == ("'format: uri' at /",)
    with pytest.raises(SchemaError, match="format: uri"):
        check_schema({"type": "string", "format": "uri"}, strict=True)


# --- strings, arrays, objects ----------------------------------------------------------------
@pytest.mark.parametrize("pattern", [
    r"^\d{3}-\d{4}$", r"^[A-Z]{2,3}$", r"[A-Z]{3}", r"^\w+@\w+\.com$", r'^a"b\\c$',
    r"^(cat|dog)s?$", r"^[^@\s]+$", r"^\D\S.$", r"^x{2,}$", r"^(ab)*?c$",
])
def test_patterns_are_python_regexes_written_as_json_text(pattern):
    """jsonschema checks a pattern with re.search: the grammar writes exactly the JSON strings
    (quotes and backslashes escaped) whose value re.search accepts."""
    import re

    schema = {"type": "string", "pattern": pattern}
    assert not check_schema(schema, strict=True).post_checked
    for v in all_valid(schema, n=80):
        assert re.search(pattern, v)
    rx = grammar_regex(compile_schema(schema).text)
    rng = random.Random(0)
    alphabet = 'abcxyzAZ09-@._ "\\sdot'
    for _ in range(3000):
        cand = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        for s in (cand, "cats", "dog", "555-1234", "ab@cd.com", 'a"b\\c', "xxx", "ababc"):
            assert bool(rx.fullmatch(json.dumps(s))) == bool(re.search(pattern, s)), s


def test_patterns_a_grammar_cannot_follow_are_checked_after_generation():
    for pattern in (r"^(?!x).+$", r"^(a)\1$", r"^\bword$", r"(?i)^abc$", r"^a|b$"):
        plan = check_schema({"type": "string", "pattern": pattern})
        assert plan.post_checked == ("'pattern' at /",), pattern
        with pytest.raises(SchemaError, match="pattern"):
            check_schema({"type": "string", "pattern": pattern}, strict=True)


def test_string_lengths_count_characters():
    schema = {"type": "string", "minLength": 2, "maxLength": 5}
    values = all_valid(schema)
    assert {len(v) for v in values} <= set(range(2, 6)) and len({len(v) for v in values}) > 1


def test_array_lengths():
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4}
    lengths = {len(v) for v in all_valid(schema)}
    assert lengths <= {2, 3, 4} and 4 in lengths


def test_tuples_with_prefix_items():
    from pydantic import BaseModel

    class Segment(BaseModel):
        start: tuple[float, float]
        tags: tuple[str, ...]
        pair: tuple[int, str]

    for v in all_valid(Segment.model_json_schema()):
        Segment.model_validate(v)
    schema = {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
              "items": {"type": "boolean"}, "maxItems": 4}
    values = all_valid(schema)
    assert any(len(v) > 2 for v in values) and all(isinstance(x, bool) for v in values
                                                   for x in v[2:])


def test_additional_properties_never_repeat_a_declared_key():
    schema = {"type": "object", "properties": {"id": {"type": "integer"}},
              "additionalProperties": {"type": "string"}}
    rng_texts = texts(schema, n=300)
    for t in rng_texts:
        pairs = json.loads(t, object_pairs_hook=lambda kv: kv)
        assert [k for k, _ in pairs].count("id") <= 1, t
        assert validate_value(schema, dict(pairs)) is None
    assert any(len(json.loads(t)) > 1 for t in rng_texts)
    closed = {"type": "object", "properties": {"a": {"type": "boolean"}},
              "additionalProperties": False}
    assert all(set(v) <= {"a"} for v in all_valid(closed))


def test_a_required_property_not_declared_is_still_written():
    schema = {"type": "object", "required": ["x"], "properties": {"y": {"type": "integer"}},
              "additionalProperties": {"type": "integer"}}
    assert all("x" in v for v in all_valid(schema))
    with pytest.raises(SchemaError, match="no value"):
        check_schema({"type": "object", "required": ["x"], "additionalProperties": False})


def test_type_lists_keep_their_keywords():
    schema = {"type": ["string", "null"], "maxLength": 3}
    values = all_valid(schema)
    assert None in values and all(v is None or len(v) <= 3 for v in values)


# --- combinations ------------------------------------------------------------------------------
def test_optional_fields_any_of_null():
    from pydantic import BaseModel

    class Item(BaseModel):
        note: str | None = None
        count: int | None = None
        when: dt.date | None = None

    values = all_valid(Item.model_json_schema(), n=200)
    assert any(v.get("note") is None for v in values) and any(v.get("count") is not None
                                                            for v in values)
    assert not check_schema(Item.model_json_schema(), strict=True).post_checked


def test_enum_and_const_are_narrowed_to_what_the_rest_allows():
    schema = {"type": "string", "enum": ["a", 1, None, "b"]}
    assert set(all_valid(schema, n=40)) == {"a", "b"}
    with pytest.raises(SchemaError, match="no value"):
        check_schema({"type": "integer", "const": "x"})
    assert all_valid({"const": {"k": [1, "x"]}}, n=5)[0] == {"k": [1, "x"]}


def test_refs_defs_and_recursion():
    from pydantic import BaseModel

    class Node(BaseModel):
        value: int
        children: list[Node] = []

    schema = Node.model_json_schema()
    assert "$defs" in schema
    for v in all_valid(schema, budget=200):
        Node.model_validate(v)


def test_discriminated_one_of_is_enforced_overlapping_one_of_is_checked_after():
    from typing import Literal

    from pydantic import BaseModel, Field

    class Cat(BaseModel):
        kind: Literal["cat"]
        lives: int

    class Dog(BaseModel):
        kind: Literal["dog"]
        bark: str

    class Pet(BaseModel):
        pet: Cat | Dog = Field(discriminator="kind")

    schema = Pet.model_json_schema()
    assert "oneOf" in json.dumps(schema)
    assert not check_schema(schema, strict=True).post_checked
    for v in all_valid(schema):
        Pet.model_validate(v)
    overlapping = {"oneOf": [{"type": "integer"}, {"type": "number"}]}
    assert check_schema(overlapping).post_checked == ("'oneOf' at /",)
    with pytest.raises(SchemaError, match="oneOf"):
        check_schema(overlapping, strict=True)


def test_all_of_and_any_of_siblings_are_merged():
    schema = {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}},
                         "required": ["a"]},
                        {"properties": {"b": {"type": "string"}}, "required": ["b"]}]}
    assert not check_schema(schema, strict=True).post_checked
    assert all({"a", "b"} <= set(v) for v in all_valid(schema))
    siblings = {"type": "object", "required": ["x"],
                "anyOf": [{"properties": {"x": {"type": "integer"}}},
                          {"properties": {"x": {"type": "boolean"}}}]}
    assert all("x" in v for v in all_valid(siblings))


def test_annotations_are_ignored():
    bare = {"type": "object", "properties": {"a": {"type": "integer"}}}
    annotated = {"type": "object", "title": "T", "description": "d", "examples": [{"a": 1}],
                 "properties": {"a": {"type": "integer", "title": "A", "default": 3,
                                      "description": "x", "examples": [1, 2]}}}
    assert compile_schema(bare).text == compile_schema(annotated).text
    assert not check_schema(annotated, strict=True).post_checked


# --- what the grammar leaves to the check after generation -----------------------------------
POST_CHECKED = {"type": "object", "properties": {
    "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    "n": {"type": "integer", "multipleOf": 5}}, "required": ["tags", "n"]}


def test_post_checked_keywords_are_reported_with_their_path():
    plan = plan_schema(POST_CHECKED)
    assert plan.post_checked == ("'uniqueItems' at /properties/tags",
                                 "'multipleOf' at /properties/n")


def test_calls_are_checked_after_generation_for_what_the_grammar_cannot_enforce():
    tool = {"type": "function", "function": {"name": "f", "parameters": POST_CHECKED}}
    plan = ToolPlan.build(tools=[tool], tool_choice="required", max_tokens=100)
    bad = '{"name": "f", "parameters": {"tags": ["a", "a"], "n": 5}}'
    out = plan.finish(bad, "stop")
    assert not out.tool_calls and out.content == bad  # returned as text, never as a call
    good = '{"name": "f", "parameters": {"tags": ["a", "b"], "n": 10}}'
    assert plan.finish(good, "stop").tool_calls
    with pytest.raises(InvalidRequestError) as e:
        parse_tools([{"type": "function", "function": {"name": "f", "parameters": POST_CHECKED,
                                                       "strict": True}}])
    assert "'uniqueItems' at /properties/tags" in e.value.message


def test_formats_are_asserted_by_the_check():
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"d": {"type": "string", "format": "date"}},
        "required": ["d"]}}}
    plan = ToolPlan.build(tools=[tool], tool_choice="auto")
    assert not plan.finish('{"name": "f", "parameters": {"d": "2023-02-30"}}', "stop").tool_calls
    assert plan.finish('{"name": "f", "parameters": {"d": "2024-02-29"}}', "stop").tool_calls


def test_structured_answers_are_checked_and_strict_refuses_what_it_cannot_enforce():
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": POST_CHECKED}}
    plan = ToolPlan.build(response_format=rf)
    out = plan.finish('{"tags": ["a", "a"], "n": 5}', "stop")
    assert out.content == '{"tags": ["a", "a"], "n": 5}' and "non-unique" in (out.invalid or "")
    assert plan.finish('{"tags": ["a"], "n": 5}', "stop").invalid is None
    assert "not JSON" in (plan.finish('{"tags": [', "length").invalid or "")
    strict = {"type": "json_schema", "json_schema": {"name": "x", "schema": POST_CHECKED,
                                                     "strict": True}}
    with pytest.raises(InvalidRequestError) as e:
        ToolPlan.build(response_format=strict)
    assert e.value.param == "response_format.json_schema.schema"
    assert "'uniqueItems' at /properties/tags" in e.value.message
    assert "strict" in e.value.message
