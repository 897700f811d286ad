"""Tool calling and structured output through the real app (FastAPI + service + tool plan) over a
fake engine with scripted replies: what reaches the engine (prompt, constraint) and what the client
gets back (tool_calls, content, finish_reason, streamed deltas, 400s)."""

from __future__ import annotations

import json

import pytest

from gemmakit.types import Capabilities

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["location"]}}}
MATH = {"type": "function", "function": {
    "name": "calculate_math", "parameters": {"type": "object", "properties": {
        "expression": {"type": "string"}}, "required": ["expression"]}}}
ASK = [{"role": "user", "content": "Weather in Tokyo?"}]
CALL = '{"name": "get_weather", "parameters": {"location": "Tokyo"}}'


@pytest.fixture
def engine(fake_engine_class):
    return fake_engine_class(context_length=4096, capabilities=Capabilities(constraints=True))


@pytest.fixture
def client(make_client, engine):
    return make_client(engine)


def chat(client, **body):
    return client.post("/v1/chat/completions", json={"model": "gemma-test", **body})


def prompt_of(engine) -> str:
    return engine.detokenize(engine.requests[-1].prompt_tokens)


def test_auto_parses_a_call_and_declares_tools_in_the_first_user_turn(client, engine):
    engine.queue_text("Checking.\n", CALL[:20], CALL[20:])
    r = chat(client, messages=ASK, tools=[WEATHER, MATH])
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"location": "Tokyo"}'}
    p = prompt_of(engine)
    assert p.index('"name": "calculate_math"') < p.index("Weather in Tokyo?")
    assert p.count("<start_of_turn>user") == 1
    assert engine.requests[-1].constraint is None  # auto: the model chooses freely


def test_auto_reply_without_a_call_is_plain_content(client, engine):
    engine.queue_text("It is sunny.")
    choice = chat(client, messages=ASK, tools=[WEATHER]).json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "It is sunny."}
    assert choice["finish_reason"] == "stop"


@pytest.mark.parametrize("reply", [
    '{"name": "get_time", "parameters": {}}',  # not a given tool
    '{"name": "get_weather", "parameters": {"location": 5}}',  # does not validate
])
def test_invalid_calls_never_leave_the_server(client, engine, reply):
    engine.queue_text(reply)
    choice = chat(client, messages=ASK, tools=[WEATHER]).json()["choices"][0]
    assert "tool_calls" not in choice["message"]
    assert choice["message"]["content"] == reply
    assert choice["finish_reason"] == "stop"
    # ... and the client is told why (not only the server's log).
    assert "get_time" in choice["schema_error"] or "do not validate" in choice["schema_error"]


def failures(client, kind: str) -> float:
    text = client.get("/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith(
        "gemmakit_schema_check_failures_total{") and f'kind="{kind}"' in ln)
    return float(line.rsplit(" ", 1)[1])


UNIQUE = {"type": "json_schema", "json_schema": {"name": "tags", "schema": {
    "type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                              "uniqueItems": True}},
    "required": ["tags"]}}}


def test_a_structured_answer_failing_the_check_after_generation_says_so(client, engine):
    """uniqueItems is left to the check after generation (without strict): an answer that
    breaks it comes back as it is, with the reason on the choice, streamed or not, and counted
    in /metrics; a valid one carries nothing."""
    before = failures(client, "answer")
    engine.queue_text('{"tags": ["a", ', '"a"]}')
    choice = chat(client, messages=ASK, response_format=UNIQUE).json()["choices"][0]
    assert choice["message"]["content"] == '{"tags": ["a", "a"]}'
    assert "non-unique" in choice["schema_error"] or "unique" in choice["schema_error"]
    engine.queue_text('{"tags": ["a", ', '"a"]}')
    events = _events(client, messages=ASK, response_format=UNIQUE)
    [last] = [ch for ev in events for ch in ev["choices"] if ch["finish_reason"]]
    assert last["schema_error"] == choice["schema_error"]
    assert all("schema_error" not in ch for ev in events for ch in ev["choices"]
               if not ch["finish_reason"])
    assert failures(client, "answer") == before + 2
    engine.queue_text('{"tags": ["a", "b"]}')
    choice = chat(client, messages=ASK, response_format=UNIQUE).json()["choices"][0]
    assert "schema_error" not in choice
    engine.queue_text('{"tags": ["a", "b"]}')
    events = _events(client, messages=ASK, response_format=UNIQUE)
    assert all("schema_error" not in ch for ev in events for ch in ev["choices"])
    assert failures(client, "answer") == before + 2


def test_rejected_calls_are_counted_and_streamed_with_their_reason(client, engine):
    before = failures(client, "call")
    engine.queue_text('{"name": "get_time", ', '"parameters": {}}')
    events = _events(client, messages=ASK, tools=[WEATHER])
    [last] = [ch for ev in events for ch in ev["choices"] if ch["finish_reason"]]
    assert last["finish_reason"] == "stop" and "get_time" in last["schema_error"]
    assert failures(client, "call") == before + 1
    engine.queue_text("It is sunny.")  # prose is no failed call
    assert "schema_error" not in chat(client, messages=ASK, tools=[WEATHER]).json()["choices"][0]
    assert failures(client, "call") == before + 1


def test_parallel_tool_calls_false_refuses_two_calls(client, engine):
    two = f"[{CALL}, {CALL}]"
    engine.queue_text(two)
    choice = chat(client, messages=ASK, tools=[WEATHER],
                  parallel_tool_calls=False).json()["choices"][0]
    assert "tool_calls" not in choice["message"]
    engine.queue_text(two)
    choice = chat(client, messages=ASK, tools=[WEATHER]).json()["choices"][0]
    assert len(choice["message"]["tool_calls"]) == 2
    ids = {c["id"] for c in choice["message"]["tool_calls"]}
    assert len(ids) == 2


def test_required_and_named_send_a_grammar(client, engine):
    engine.queue_text(CALL)
    r = chat(client, messages=ASK, tools=[WEATHER, MATH], tool_choice="required")
    assert r.json()["choices"][0]["finish_reason"] == "tool_calls"
    g = engine.requests[-1].constraint
    assert g.kind == "grammar" and '\\"calculate_math\\"' in g.value
    engine.queue_text(CALL)
    chat(client, messages=ASK, tools=[WEATHER, MATH],
         tool_choice={"type": "function", "function": {"name": "get_weather"}},
         parallel_tool_calls=False)
    g = engine.requests[-1].constraint.value
    assert '\\"get_weather\\"' in g and "calculate_math" not in g
    assert "alternative" not in g  # a single call, no list


def test_none_declares_nothing_and_never_calls(client, engine):
    engine.queue_text(CALL)
    choice = chat(client, messages=ASK, tools=[WEATHER], tool_choice="none").json()["choices"][0]
    assert choice["message"]["content"] == CALL and "tool_calls" not in choice["message"]
    assert "get_weather" not in prompt_of(engine)
    assert engine.requests[-1].constraint is None


def test_response_format_json_schema_sends_a_grammar(client, engine):
    engine.queue_text('{"city": "Tokyo"}')
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    r = chat(client, messages=ASK, response_format={
        "type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}})
    assert r.json()["choices"][0]["message"]["content"] == '{"city": "Tokyo"}'
    assert '\\"city\\"' in engine.requests[-1].constraint.value
    engine.queue_text("{}")
    chat(client, messages=ASK, response_format={"type": "json_object"})
    assert engine.requests[-1].constraint is not None


def test_tool_results_are_fed_back(client, engine):
    engine.queue_text("It is 18 degrees in Tokyo.")
    messages = [*ASK,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"location": "Tokyo"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 18}'}]
    r = chat(client, messages=messages, tools=[WEATHER])
    assert r.status_code == 200, r.text
    p = prompt_of(engine)
    assert ('<start_of_turn>model\n{"name": "get_weather", "parameters": {"location": "Tokyo"}}'
            '<end_of_turn>') in p
    assert '<start_of_turn>user\n```tool_output\n{"temperature": 18}\n```<end_of_turn>' in p
    assert p.endswith("<start_of_turn>model\n")


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "multipleOf": 2}}}}}],
      "tool_choice": "required"}, "tools[0].function.parameters"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "bogus"}}}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "response_format"),
    ({"tools": [WEATHER], "tool_choice": "required", "ignore_eos": True}, "ignore_eos"),
])
def test_bad_requests_are_400s_with_param(client, engine, body, param):
    r = chat(client, messages=ASK, **body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert not engine.requests  # nothing reached the engine


def test_tool_message_must_answer_a_call(client, engine):
    r = chat(client, messages=[*ASK, {"role": "tool", "tool_call_id": "x", "content": "1"}])
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages[1].tool_call_id"


def test_constraint_on_an_engine_without_grammar_support_is_refused(make_client,
                                                                     fake_engine_class):
    c = make_client(fake_engine_class())
    r = chat(c, messages=ASK, response_format={"type": "json_object"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported"
    assert r.json()["error"]["param"] == "response_format"


def _events(client, **body):
    with client.stream("POST", "/v1/chat/completions",
                       json={"model": "gemma-test", "stream": True, **body}) as r:
        assert r.status_code == 200
        lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_streaming_tool_calls_rebuild_the_non_streamed_reply(client, engine):
    pieces = ("Sure", ", one moment.\n", "[", CALL[:15], CALL[15:], ", ",
              '{"name": "calculate_math", "parameters": {"expression": "1+1"}}', "]")
    engine.queue_text(*pieces)
    full = chat(client, messages=ASK, tools=[WEATHER, MATH]).json()["choices"][0]
    engine.queue_text(*pieces)
    events = _events(client, messages=ASK, tools=[WEATHER, MATH])
    content, calls, finish = "", {}, None
    for ev in events:
        for ch in ev["choices"]:
            d = ch["delta"]
            content += d.get("content") or ""
            for tc in d.get("tool_calls") or []:
                slot = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                slot["id"] = tc.get("id") or slot["id"]
                slot["name"] += (tc.get("function") or {}).get("name") or ""
                slot["arguments"] += (tc.get("function") or {}).get("arguments") or ""
            finish = ch["finish_reason"] or finish
    assert content == full["message"]["content"] == "Sure, one moment."
    assert finish == full["finish_reason"] == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (t["function"]["name"], t["function"]["arguments"]) for t in full["message"]["tool_calls"]]
    assert all(c["id"].startswith("call_") for c in calls.values())
    # Prose went out before the calls were complete.
    first_content = next(i for i, ev in enumerate(events) if ev["choices"]
                         and ev["choices"][0]["delta"].get("content"))
    first_call = next(i for i, ev in enumerate(events) if ev["choices"]
                      and ev["choices"][0]["delta"].get("tool_calls"))
    assert first_content < first_call
