"""Constrained replies on the real bundled Gemma 3 270M always complete within max_tokens: forced
calls with parallel calls allowed (the model's runaway case), named calls and structured answers,
greedy and sampled, at max_tokens 48 and 96; and a max_tokens too small for the shortest reply is
a 400 before generation. In-process (the llama.cpp engine and the pipeline), with the engine's
tokenizer, as `ToolPlan.build(max_tokens=..., tokenizer=engine)`."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from gemmakit.errors import InvalidRequestError
from gemmakit.tools.chat import ToolPlan
from tests.integration.test_tools import SCHEMAS, TOOLS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

ASK = [{"role": "user", "content": "What's the weather in Tokyo and in Paris, and what is 17*3?"}]
CITY = {"type": "object", "properties": {
    "name": {"type": "string"}, "population": {"type": "number", "minimum": 0},
    "founded": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    "districts": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
    "required": ["name", "population", "districts"]}


@pytest.fixture(scope="module")
def pipeline(engine):
    from gemmakit.compose import build_pipeline

    return build_pipeline(engine, "gemma-3-270m")


def _run(pipeline, plan, max_tokens, temperature, seed, messages=ASK):
    from gemmakit.pipeline import Caller, ChatJob
    from gemmakit.tools.runner import _to_message
    from gemmakit.types import SamplingParams

    async def go():
        run = pipeline.begin(Caller(endpoint="test"))
        await run.chat(ChatJob([_to_message(m) for m in messages], SamplingParams(
            max_tokens=max_tokens, temperature=temperature, seed=seed), plan=plan))
        (result,) = await run.collect()
        return result

    return asyncio.run(go())


@pytest.mark.parametrize("max_tokens", [48, 96])
@pytest.mark.parametrize(("temperature", "seed"), [(0.0, None), (1.0, 1), (1.0, 2)])
def test_forced_parallel_calls_always_complete(pipeline, engine, max_tokens, temperature, seed):
    plan = ToolPlan.build(tools=TOOLS, tool_choice="required", max_tokens=max_tokens,
                          tokenizer=engine)
    r = _run(pipeline, plan, max_tokens, temperature, seed)
    assert r.finish_reason == "tool_calls", r.text
    assert r.tool_calls and len(r.token_ids) <= max_tokens
    for c in r.tool_calls:
        jsonschema.validate(json.loads(c["function"]["arguments"]), SCHEMAS[c["function"]["name"]])


def test_named_call_completes_at_a_budget_the_bytes_would_refuse(pipeline, engine):
    """`{"name": "calculate_math", "parameters": {"expression": ""}}` is 56 bytes: counted one
    token per byte it would not fit in 40 tokens; counted in its real tokens it does."""
    plan = ToolPlan.build(tools=TOOLS, tool_choice={"type": "function", "function": {
        "name": "calculate_math"}}, parallel_tool_calls=False, max_tokens=40, tokenizer=engine)
    with pytest.raises(InvalidRequestError):
        ToolPlan.build(tools=TOOLS, tool_choice={"type": "function", "function": {
            "name": "calculate_math"}}, parallel_tool_calls=False, max_tokens=40)
    for temperature, seed in ((0.0, None), (1.0, 7)):
        r = _run(pipeline, plan, 40, temperature, seed)
        assert r.finish_reason == "tool_calls" and len(r.tool_calls) == 1, r.text


@pytest.mark.parametrize("max_tokens", [48, 96])
def test_structured_answers_always_complete(pipeline, engine, max_tokens):
    rf = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
    plan = ToolPlan.build(response_format=rf, max_tokens=max_tokens, tokenizer=engine)
    for temperature, seed in ((0.0, None), (1.0, 3)):
        r = _run(pipeline, plan, max_tokens, temperature, seed,
                 [{"role": "user", "content": "Describe Tokyo as JSON."}])
        assert r.finish_reason == "stop", r.text
        assert len(r.token_ids) <= max_tokens
        jsonschema.validate(json.loads(r.text), CITY)
        assert plan.check_answer(r.text) is None


def test_too_small_a_budget_is_refused_before_generation(engine):
    with pytest.raises(InvalidRequestError) as e:
        ToolPlan.build(tools=TOOLS, tool_choice="required", max_tokens=8, tokenizer=engine)
    assert e.value.param == "max_tokens" and "too small" in e.value.message
