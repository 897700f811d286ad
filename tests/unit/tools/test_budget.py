"""Budgeted grammars (tools/gbnf.py): every text they accept fits in the budget and is valid, the
shortest valid reply is known up front, and a budget too small for it is a 400 on max_tokens.

The texts are random walks over the emitted GBNF (tests/unit/tools/grammars.py measures their
cost itself: bytes for characters, one per token element), including walks that never stop while
the grammar lets them go on — the model that keeps appending calls until the budget runs out."""

from __future__ import annotations

import json
import logging
import random

import pytest

from gemmakit.errors import InvalidRequestError
from gemmakit.tools import constraints as gc
from gemmakit.tools import gbnf as gb
from gemmakit.tools.chat import ToolPlan
from gemmakit.tools.constraints import (
    BudgetError,
    call_schema,
    compile_schema,
    shortest_tokens,
    tool_call_constraint,
)
from gemmakit.tools.schema import parse_tools, validate_value
from tests.unit.tools.grammars import ToyTokenizer, accepts, grammar_regex, walk

WEATHER = {"type": "object", "properties": {
    "location": {"type": "string", "description": "City"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["location"]}
MATH = {"type": "object", "properties": {"expression": {"type": "string"}},
        "required": ["expression"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "calculate_math", "parameters": MATH}}]
NESTED = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4},
    "scores": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 10}},
    "owner": {"anyOf": [{"$ref": "#/$defs/person"}, {"type": "null"}]}},
    "required": ["name", "tags", "owner"],
    "$defs": {"person": {"type": "object", "properties": {
        "email": {"type": "string", "format": "email"},
        "born": {"type": "string", "format": "date"}}, "required": ["email"]}}}


def _calls_valid(text: str, specs) -> bool:
    value = json.loads(text)
    calls = value if isinstance(value, list) else [value]
    by_name = {s.name: s for s in specs}
    return bool(calls) and all(c["name"] in by_name and by_name[c["name"]].validate(
        c["parameters"]) is None for c in calls)


@pytest.mark.parametrize("tokenizer", [None, ToyTokenizer()], ids=["bytes", "tokens"])
@pytest.mark.parametrize("max_tokens", [40, 48, 64, 96, 160])
def test_forced_calls_fit_and_validate_however_the_model_samples(tokenizer, max_tokens):
    specs = parse_tools(TOOLS)
    schema = call_schema(specs, True)
    try:
        g = compile_schema(schema, max_tokens=max_tokens, tokenizer=tokenizer)
    except BudgetError:
        assert shortest_tokens(schema, tokenizer) > max_tokens
        return
    assert g.shortest is not None and g.shortest <= max_tokens and g.max_tokens == max_tokens
    pieces = tokenizer.pieces if tokenizer else None
    rng = random.Random(max_tokens)
    for k in range(120):
        text, cost = walk(g.text, rng, pieces, longest=k % 2 == 0)
        assert cost <= max_tokens - 1, (cost, text)  # one token is left for the end of turn
        assert _calls_valid(text, specs), text


def test_a_runaway_list_of_calls_still_closes_with_whole_calls():
    """The bundled model's failure: parallel calls appended until max_tokens cut the reply."""
    specs = parse_tools(TOOLS)
    tok = ToyTokenizer()
    g = compile_schema(call_schema(specs, True), max_tokens=96, tokenizer=tok)
    rng = random.Random(1)
    lengths = set()
    for _ in range(60):
        text, cost = walk(g.text, rng, tok.pieces, longest=True)
        value = json.loads(text)
        lengths.add(len(value) if isinstance(value, list) else 1)
        assert cost <= 95 and _calls_valid(text, specs)
    assert max(lengths) > 1  # parallel calls stay possible...
    assert min(lengths) >= 1  # ...never at the price of zero complete calls


def test_too_small_a_budget_is_a_400_naming_max_tokens_before_anything_runs():
    with pytest.raises(InvalidRequestError) as e:
        ToolPlan.build(tools=TOOLS, tool_choice="required", max_tokens=20)
    err = e.value
    assert err.status == 400 and err.param == "max_tokens" and err.code == "max_tokens_too_small"
    assert "max_tokens 20 is too small" in err.message and "shortest" in err.message
    # The smallest budget that is accepted really holds the shortest call, and nothing longer.
    need = shortest_tokens(call_schema(parse_tools(TOOLS), True))
    plan = ToolPlan.build(tools=TOOLS, tool_choice="required", max_tokens=need)
    assert plan.constraint is not None
    rng = random.Random(0)
    texts = {walk(plan.constraint.value, rng)[0] for _ in range(20)}
    assert all(len(t.encode()) <= need - 1 for t in texts)
    with pytest.raises(BudgetError):
        ToolPlan.build(tools=TOOLS, tool_choice="required", max_tokens=need - 1)


def test_token_elements_make_small_budgets_usable():
    tok = ToyTokenizer()
    schema = call_schema(parse_tools(TOOLS[:1]), False)
    by_bytes = shortest_tokens(schema)
    by_tokens = shortest_tokens(schema, tok)
    assert by_tokens < by_bytes / 2  # 3-character toy tokens
    g = compile_schema(schema, max_tokens=by_tokens, tokenizer=tok)
    assert "<[" in g.text


def test_structured_answers_fit_and_validate():
    tok = ToyTokenizer()
    for max_tokens in (60, 90, 140):
        g = compile_schema(NESTED, max_tokens=max_tokens, tokenizer=tok)
        rng = random.Random(max_tokens)
        for k in range(80):
            text, cost = walk(g.text, rng, tok.pieces, longest=k % 3 == 0)
            assert cost <= max_tokens - 1
            assert validate_value(NESTED, json.loads(text)) is None, text


def test_json_object_mode_fits():
    g = compile_schema({"type": "object"}, max_tokens=40)
    rng = random.Random(3)
    for k in range(100):
        text, cost = walk(g.text, rng, longest=k % 2 == 0)
        assert cost <= 39 and isinstance(json.loads(text), dict), text


def test_plan_builds_budgeted_constraints_for_every_constrained_mode():
    tok = ToyTokenizer()
    named = ToolPlan.build(tools=TOOLS, tool_choice={"type": "function", "function": {
        "name": "calculate_math"}}, max_tokens=60, tokenizer=tok)
    text, cost = walk(named.constraint.value, random.Random(0), tok.pieces, longest=True)
    calls = json.loads(text)
    assert {c["name"] for c in calls} == {"calculate_math"} and cost <= 59
    rf = {"type": "json_schema", "json_schema": {"name": "n", "schema": NESTED}}
    answer = ToolPlan.build(response_format=rf, max_tokens=80, tokenizer=tok)
    text, _ = walk(answer.constraint.value, random.Random(0), tok.pieces, longest=True)
    assert answer.finish(text, "stop").invalid is None
    # auto + response_format: a call or the answer; the answer's own $defs are kept apart.
    either = ToolPlan.build(tools=TOOLS, response_format=rf, max_tokens=120, tokenizer=tok)
    rng = random.Random(5)
    for _ in range(40):
        text, cost = walk(either.constraint.value, rng, tok.pieces)
        value = json.loads(text)
        assert cost <= 119
        assert _calls_valid(text, parse_tools(TOOLS)) if (isinstance(value, list) or "parameters"
                                                          in value) else \
            validate_value(NESTED, value) is None


def test_budgeted_language_is_the_plain_one_cut_to_the_budget():
    """Exactly: a text is accepted under a budget iff the unbudgeted grammar accepts it and it
    costs at most the budget (nothing that fits is lost, nothing that does not is kept)."""
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3},
                                               "b": {"enum": [1, 22, 333]}}, "required": ["b"]}
    plain = grammar_regex(compile_schema(schema).text)
    texts = [json.dumps(v, ensure_ascii=False) for v in (
        {"b": 1}, {"b": 22}, {"b": 333}, {"a": "", "b": 1}, {"a": "x", "b": 22},
        {"a": "xyz", "b": 333}, {"a": "é", "b": 1}, {"a": "日本", "b": 22}, {"a": "wxyz", "b": 1},
        {"b": 4}, {"b": 1, "a": "x"})] + ['{"b":1}', '{"a": "x"}']
    for budget in (9, 12, 16, 20, 24, 30):
        try:
            g = compile_schema(schema, max_tokens=budget)
        except BudgetError:
            assert budget - 1 < len('{"b": 1}')
            continue
        for t in texts:
            fits = plain.fullmatch(t) is not None and len(t.encode()) <= budget - 1
            assert accepts(g.text, t) == fits, (budget, t)


def test_a_literal_after_characters_that_could_start_it_stays_characters():
    """llama.cpp would let a token begin under the character rule and end inside the token
    element, then refuse it when accepting: such literals are not turned into tokens."""
    schema = {"type": "string", "pattern": "^[a-z]ab$"}
    tok = ToyTokenizer()
    g = compile_schema(schema, max_tokens=20, tokenizer=tok)
    rules = gb.parse_gbnf(g.text)
    entered_by_class = [e.items[-1].name for e in rules.values() if isinstance(e, gb.Seq)
                        and isinstance(e.items[0], gb.Cls)]
    assert entered_by_class
    for name in entered_by_class:  # "ab\"" follows [a-z], which holds "a": it stays characters
        first = rules[name].items[0] if isinstance(rules[name], gb.Seq) else rules[name]
        assert first == gb.Lit('ab"')
    assert "<[" in g.text  # the opening quote, which nothing precedes, is a token


def test_canonical_spacing():
    g = compile_schema(call_schema(parse_tools(TOOLS[:1]), False))
    text, _ = walk(compile_schema(call_schema(parse_tools(TOOLS[:1]), False),
                                  max_tokens=200).text, random.Random(2))
    assert text.startswith('{"name": "get_weather", "parameters": {"location": "')
    assert json.dumps(json.loads(text), ensure_ascii=False) == text or "\\" in text
    assert "space ::=" not in g.text


def test_a_huge_budget_is_lowered_to_keep_the_grammar_small(monkeypatch):
    monkeypatch.setattr(gb, "MAX_PAIRS", 2000)
    g = compile_schema(MATH, max_tokens=4000)
    assert g.max_tokens is not None and g.max_tokens < 4000
    text, cost = walk(g.text, random.Random(0), longest=True)
    assert cost <= g.max_tokens - 1 and validate_value(MATH, json.loads(text)) is None


def test_a_schema_too_large_to_budget_is_generated_without_the_guarantee(monkeypatch, caplog):
    monkeypatch.setattr(gc, "_CACHE", type(gc._CACHE)())
    monkeypatch.setattr(gb, "MAX_STATES", 5)
    monkeypatch.setattr(gb.to_automaton, "__defaults__", ("root", 5, None))
    with caplog.at_level(logging.WARNING, logger="gemmakit.tools"):
        g = compile_schema(NESTED, max_tokens=100)
    assert g.shortest is None and "not budgeted" in caplog.text


def test_parallel_list_is_only_as_long_as_the_budget_can_hold():
    specs = parse_tools(TOOLS)
    tok = ToyTokenizer()
    small = tool_call_constraint(specs, True, max_tokens=40, tokenizer=tok).value
    big = tool_call_constraint(specs, True, max_tokens=400, tokenizer=tok).value
    assert len(small) < len(big)


def test_gbnf_reader_reads_what_it_prints():
    specs = parse_tools(TOOLS)
    text = compile_schema(call_schema(specs, True)).text
    rules = gb.parse_gbnf(text)
    assert gb.parse_gbnf(gb.print_gbnf(rules)) == rules
    budgeted = compile_schema(call_schema(specs, True), max_tokens=80,
                              tokenizer=ToyTokenizer()).text
    assert gb.parse_gbnf(gb.print_gbnf(gb.parse_gbnf(budgeted))) == gb.parse_gbnf(budgeted)
