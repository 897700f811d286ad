"""Tool calling and structured output on the real server with the bundled Gemma 3 270M, through
the official `openai` client. The model is a small base model: what is asserted is what gemmakit
guarantees (forced calls and structured answers always validate; auto/none behave per contract),
not the model's judgement."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from .conftest import MODEL

pytestmark = pytest.mark.integration

WEATHER_PARAMS = {"type": "object", "properties": {
    "location": {"type": "string"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["location", "unit"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "calculate_math", "description": "Arithmetic",
                                      "parameters": {"type": "object", "properties": {
                                          "expression": {"type": "string"}},
                                          "required": ["expression"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What's the weather in Tokyo?"}]


def _check_calls(calls) -> None:
    assert calls
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_")
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])
    assert len({c.id for c in calls}) == len(calls)


def _stream(client, **kw):
    """(content, [(id, name, arguments)], finish_reason) rebuilt from the streamed deltas."""
    content, calls, finish = "", {}, None
    for ev in client.chat.completions.create(stream=True, **kw):
        for ch in ev.choices:
            content += ch.delta.content or ""
            for tc in ch.delta.tool_calls or []:
                slot = calls.setdefault(tc.index, ["", "", ""])
                slot[0] += tc.id or ""
                if tc.function:
                    slot[1] += tc.function.name or ""
                    slot[2] += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    return content, [tuple(v) for v in calls.values()], finish


@pytest.mark.parametrize("seed", [1, 2])
def test_required_call_always_validates(client, seed):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                       tool_choice="required", parallel_tool_calls=False,
                                       max_tokens=48, temperature=1.0, seed=seed)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    _check_calls(choice.message.tool_calls)


def test_named_call_streams_tool_call_deltas(client):
    kw = dict(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=48, temperature=0,
              parallel_tool_calls=False,
              tool_choice={"type": "function", "function": {"name": "calculate_math"}})
    full = client.chat.completions.create(**kw).choices[0]
    assert [c.function.name for c in full.message.tool_calls] == ["calculate_math"]
    _check_calls(full.message.tool_calls)
    content, calls, finish = _stream(client, **kw)
    assert finish == "tool_calls" and not content
    assert [(n, a) for _, n, a in calls] == [
        (c.function.name, c.function.arguments) for c in full.message.tool_calls]
    assert all(i.startswith("call_") for i, _, _ in calls)


def test_required_streams_valid_parallel_calls(client):
    content, calls, finish = _stream(client, model=MODEL, messages=ASK, tools=TOOLS,
                                     tool_choice="required", max_tokens=96, temperature=0)
    if finish == "length":  # a runaway list cut by max_tokens: no call leaves unvalidated
        assert not calls and content
        return
    assert finish == "tool_calls" and calls
    for _, name, args in calls:
        jsonschema.validate(json.loads(args), SCHEMAS[name])


def test_auto_returns_either_valid_calls_or_text(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=32,
                                       temperature=0)
    msg = r.choices[0].message
    if msg.tool_calls:
        assert r.choices[0].finish_reason == "tool_calls"
        _check_calls(msg.tool_calls)
    else:
        assert isinstance(msg.content, str) and msg.content
    content, calls, finish = _stream(client, model=MODEL, messages=ASK, tools=TOOLS,
                                     max_tokens=32, temperature=0)
    assert content == (msg.content or "") and finish == r.choices[0].finish_reason
    assert [(n, a) for _, n, a in calls] == [(c.function.name, c.function.arguments)
                                             for c in msg.tool_calls or []]


def test_none_never_calls(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none",
                                       max_tokens=24, temperature=0)
    assert not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason in ("stop", "length")


def test_json_object_and_json_schema_answers_are_valid(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=48, temperature=0,
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20},
        "temperature_c": {"type": "integer", "minimum": -50, "maximum": 60},
        "sky": {"type": "string", "enum": ["clear", "cloudy", "rain"]}},
        "required": ["city", "temperature_c", "sky"]}
    kw = dict(model=MODEL, messages=ASK, max_tokens=64, temperature=0,
              response_format={"type": "json_schema",
                               "json_schema": {"name": "weather", "schema": schema,
                                               "strict": True}})
    full = client.chat.completions.create(**kw).choices[0]
    assert full.finish_reason == "stop"
    jsonschema.validate(json.loads(full.message.content), schema)
    streamed = "".join(ev.choices[0].delta.content or "" for ev in
                       client.chat.completions.create(stream=True, **kw) if ev.choices)
    assert streamed == full.message.content


@pytest.mark.parametrize(("params", "words"), [
    ({"type": "object", "properties": {"a": {"type": "strnig"}}}, "tool 'bad'"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a$"}}}, "pattern"),
    ({"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}}, "$ref loop"),
    ({"type": "object", "properties": {"a": {"type": "string", "description": "x" * 1_000_000}}},
     "limit"),
])
def test_bad_schemas_are_400s_and_the_server_keeps_serving(client, params, words):
    bad = {"type": "function", "function": {"name": "bad", "parameters": params}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK, tools=[bad],
                                       tool_choice="required", max_tokens=8)
    err = e.value.body
    assert err["param"] == "tools[0].function.parameters"
    assert words in err["message"]
    ok = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_tool_results_round_trip(client):
    messages = [*ASK,
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": "call_a", "type": "function",
                    "function": {"name": "get_weather",
                                 "arguments": '{"location": "Tokyo", "unit": "celsius"}'}}]},
                {"role": "tool", "tool_call_id": "call_a",
                 "content": '{"temperature": 18, "condition": "cloudy"}'}]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS,
                                       tool_choice="none", max_tokens=16, temperature=0)
    assert not r.choices[0].message.tool_calls
    alone = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)
    # The call and its result are in the prompt (no declarations: tool_choice is none).
    assert r.usage.prompt_tokens > alone.usage.prompt_tokens + 30


def test_tool_loop_end_to_end_with_the_example_tools(engine):
    """run_tools over the real engine: forced first calls, executed, results fed back, an answer
    at the end (the last step may not call)."""
    from gemmakit.compose import build_pipeline
    from gemmakit.tools.examples import calculate_math, get_weather
    from gemmakit.tools.runner import run_tools
    from gemmakit.types import SamplingParams

    pipeline = build_pipeline(engine, MODEL)
    for name, question in (("calculate_math", "What is 6 * 7?"),
                           ("get_weather", "How warm is it in Paris?")):
        seen = []
        result = run_tools([{"role": "user", "content": question}],
                           [get_weather, calculate_math], pipeline=pipeline,
                           tool_choice={"type": "function", "function": {"name": name}},
                           parallel_tool_calls=False, max_steps=2,
                           sampling=SamplingParams(max_tokens=48, temperature=0),
                           on_event=seen.append)
        assert seen and seen[0].name == name
        payload = json.loads(seen[0].result)
        assert ("error" in payload) == seen[0].error  # a tool error goes back to the model
        if name == "calculate_math" and not seen[0].error:
            assert payload["result"] == calculate_math(**seen[0].arguments)["result"]
        roles = [m.role for m in result.messages]
        assert roles[:4] == ["user", "assistant", "tool", "assistant"]
        assert result.steps == 2 and result.messages[1].tool_calls
        assert isinstance(result.content, str)


def test_chat_cli_with_tools_shows_calls_and_results(gemmakit_home, model_path):
    import os
    import subprocess
    import sys

    from gemmakit.tools import examples

    r = subprocess.run([sys.executable, "-m", "gemmakit", "chat", "--tools", examples.__file__,
                        "--tool-choice", "required", "--no-parallel-tool-calls",
                        "--max-tool-steps", "2", "--temperature", "0", "--max-tokens", "40",
                        "--context-length", "2048", "What is 6 * 7?"],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "GEMMAKIT_HOME": str(gemmakit_home)})
    assert r.returncode == 0, r.stderr
    shown = [ln for ln in r.stderr.splitlines() if ln.startswith("[tool] ")]
    assert len(shown) >= 2
    assert shown[0].split("(")[0] in ("[tool] get_weather", "[tool] calculate_math")
    assert shown[1].startswith(("[tool] result: ", "[tool] error: "))
    assert r.stdout.strip()  # the final answer
