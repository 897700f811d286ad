"""POST /v1/responses and GET/DELETE /v1/responses/{id} through the real app around the fake
engine: request conversion and refusals (each naming its parameter), the Response object and the
streamed events as the official `openai` package's types read them, the store
(previous_response_id, store: false, retrieve, delete) and its scoping to API keys."""

from __future__ import annotations

import json

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gemmakit.safety.auth import KeyStore
from gemmakit.types import Capabilities, Chunk, ChunkStats, TokenLogprob, TopLogprob
from tests.conftest import FakeEngine, uvicorn_thread

MODEL = "gemma-test"
PATH = "/v1/responses"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}
EVENTS = TypeAdapter(ResponseStreamEvent)


@pytest.fixture
def engine():
    return FakeEngine(context_length=4096, capabilities=Capabilities(constraints=True))


@pytest.fixture
def client(make_client, engine, tmp_path):
    return make_client(engine, model_name=MODEL, home=tmp_path / "home")


def post(c, **body):
    return c.post(PATH, json={"model": MODEL, **body})


def prompt_of(engine: FakeEngine, k: int = -1) -> str:
    return engine.detokenize(engine.requests[k].prompt_tokens)


def events_of(r) -> list[dict]:
    """The SSE events, checked against the official types: `event:` names the type, sequence
    numbers count from 0, and there is no [DONE]."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    names = [line[len("event: "):] for line in r.text.splitlines() if line.startswith("event: ")]
    data = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in data
    events = [json.loads(d) for d in data]
    assert names == [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for e in events:
        EVENTS.validate_python(e)  # strict: every required field, the right types
    return events


# --- the non-streamed response --------------------------------------------------------------------
def test_text_response_is_an_openai_response(client, engine):
    engine.queue_text("Hi", " there")
    r = post(client, input="hello", instructions="Answer briefly.", metadata={"k": "v"})
    assert r.status_code == 200, r.text
    resp = Response.model_validate(r.json())
    assert resp.status == "completed" and resp.output_text == "Hi there"
    assert resp.id.startswith("resp_") and resp.output[0].id.startswith("msg_")
    assert resp.instructions == "Answer briefly." and resp.metadata == {"k": "v"}
    assert resp.usage is not None and resp.usage.output_tokens == 2
    assert resp.usage.input_tokens == len(engine.requests[0].prompt_tokens)
    assert resp.usage.total_tokens == resp.usage.input_tokens + 2
    # instructions are the system turn, folded into the user's (Gemma's template)
    assert "Answer briefly." in prompt_of(engine) and "hello" in prompt_of(engine)


def test_max_output_tokens_makes_it_incomplete(client, engine):
    engine.queue_text("a", "b", finish_reason="length")
    r = post(client, input="hi", max_output_tokens=2)
    body = r.json()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete"
    assert engine.requests[0].sampling.max_tokens == 2


def test_sampling_fields_reach_the_engine(client, engine):
    r = post(client, input="hi", temperature=0.3, top_p=0.9, top_k=5, seed=7, stop=["\n"],
             max_output_tokens=9)
    assert r.status_code == 200, r.text
    sp = engine.requests[0].sampling
    assert (sp.temperature, sp.top_p, sp.top_k, sp.seed, sp.stop, sp.max_tokens) == \
        (0.3, 0.9, 5, 7, ["\n"], 9)
    assert (r.json()["temperature"], r.json()["top_p"]) == (0.3, 0.9)


def test_forced_function_call(client, engine):
    engine.queue_text('{"name": "get_weather", "parameters": {"city": "Paris"}}')
    r = post(client, input="Weather in Paris?", tools=[WEATHER], tool_choice="required")
    assert r.status_code == 200, r.text
    resp = Response.model_validate(r.json())
    assert engine.requests[0].constraint is not None  # the call grammar
    [call] = resp.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert resp.tools[0].name == "get_weather" and resp.tool_choice == "required"


def test_named_tool_choice_and_allowed_tools(client, engine):
    other = {**WEATHER, "name": "get_time"}
    engine.queue_text('{"name": "get_time", "parameters": {"city": "Oslo"}}')
    r = post(client, input="time?", tools=[WEATHER, other],
             tool_choice={"type": "function", "name": "get_time"})
    assert r.json()["output"][0]["name"] == "get_time"
    engine.queue_text('{"name": "get_weather", "parameters": {"city": "Oslo"}}')
    r = post(client, input="weather?", tools=[WEATHER, other], tool_choice={
        "type": "allowed_tools", "mode": "required",
        "tools": [{"type": "function", "name": "get_weather"}]})
    assert r.json()["output"][0]["name"] == "get_weather"
    assert "get_time" not in prompt_of(engine)  # only the allowed tools are declared


def test_json_schema_format_constrains_the_reply(client, engine):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    engine.queue_text('{"n": 3}')
    r = post(client, input="a number", text={"format": {
        "type": "json_schema", "name": "num", "schema": schema, "strict": True}})
    assert r.status_code == 200, r.text
    assert engine.requests[0].constraint is not None
    resp = Response.model_validate(r.json())
    assert json.loads(resp.output_text) == {"n": 3}
    assert r.json()["text"]["format"]["name"] == "num"
    engine.queue_text("{}")
    r = post(client, input="json", text={"format": {"type": "json_object"}})
    assert r.status_code == 200 and engine.requests[1].constraint is not None


def test_an_answer_failing_the_check_after_generation_says_so(client, engine):
    """uniqueItems is checked after generation: a reply that breaks it is returned, with
    `schema_error` on the response (stored, and on the streamed terminal event too)."""
    fmt = {"type": "json_schema", "name": "tags", "schema": {
        "type": "array", "items": {"type": "string"}, "uniqueItems": True}}
    engine.queue_text('["x", "x"]')
    r = post(client, input="tags", text={"format": fmt})
    assert r.status_code == 200, r.text
    Response.model_validate(r.json())
    assert "non-unique" in r.json()["schema_error"]
    assert client.get(f"{PATH}/{r.json()['id']}").json()["schema_error"] == \
        r.json()["schema_error"]
    engine.queue_text('["x", ', '"x"]')
    done = events_of(post(client, input="tags", text={"format": fmt}, stream=True))[-1]
    assert done["type"] == "response.completed"
    assert done["response"]["schema_error"] == r.json()["schema_error"]
    engine.queue_text('["x", "y"]')
    assert "schema_error" not in post(client, input="tags", text={"format": fmt}).json()


def test_function_call_round_trip_in_input(client, engine):
    engine.queue_text("It is sunny.")
    r = post(client, tools=[WEATHER], input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Rome?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"sky": "sunny"}'}])
    assert r.status_code == 200, r.text
    prompt = prompt_of(engine)
    assert "Rome" in prompt and "sunny" in prompt and "tool_output" in prompt
    assert r.json()["output"][0]["content"][0]["text"] == "It is sunny."


def test_logprobs_when_included(client, engine):
    lp = TokenLogprob("Hi", -0.5, [72, 105], (TopLogprob("Hi", -0.5, [72, 105]),))
    engine.queue_chunks([Chunk(text="Hi", token_ids=[1072], logprobs=[lp]),
                         Chunk(finish_reason="stop", stats=ChunkStats(completion_tokens=1))])
    r = post(client, input="hi", include=["message.output_text.logprobs"], top_logprobs=1)
    part = Response.model_validate(r.json()).output[0].content[0]
    assert part.logprobs[0].token == "Hi" and part.logprobs[0].top_logprobs[0].logprob == -0.5
    assert engine.requests[0].sampling.logprobs and engine.requests[0].sampling.top_logprobs == 1


# --- refusals: every one names its parameter --------------------------------------------------------
TOOLS = {"tools": [WEATHER]}


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
    ({"input": "hi", "tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, 400,
     "tools[0].type"),
    ({"input": "hi", "tool_choice": {"type": "web_search_preview"}, **TOOLS}, 400,
     "tool_choice.type"),
    ({"input": "hi", "tool_choice": {"type": "function", "name": "nope"}, **TOOLS}, 400,
     "tool_choice.name"),
    ({"input": "hi", "tools": [{**WEATHER, "parameters": {"type": "wat"}}]}, 400,
     "tools[0].parameters"),
    ({"input": "hi", "tools": [{"type": "function"}]}, 400, "tools[0].name"),
    ({"input": "hi", "max_tokens": 5}, 400, "max_tokens"),
    ({"input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"input": "hi", "tool_choice": "required", "max_output_tokens": 2, **TOOLS}, 400,
     "max_output_tokens"),
    ({"input": "hi", "temperature": 3}, 400, "temperature"),
    ({"input": "hi", "background": True}, 400, "background"),
    ({"input": "hi", "conversation": "conv_1"}, 400, "conversation"),
    ({"input": "hi", "prompt": {"id": "pmpt_1"}}, 400, "prompt"),
    ({"input": "hi", "reasoning": {"effort": "high"}}, 400, "reasoning"),
    ({"input": "hi", "truncation": "auto"}, 400, "truncation"),
    ({"input": "hi", "max_tool_calls": 2}, 400, "max_tool_calls"),
    ({"input": "hi", "include": ["reasoning.encrypted_content"]}, 400, "include[0]"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, 400,
     "text.format.schema"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x",
                                         "schema": {"type": "wat"}}}}, 400, "text.format.schema"),
    ({"input": "hi", "text": {"verbosity": "low"}}, 400, "text.verbosity"),
    ({"input": "hi", "n": 2}, 400, "n"),
    ({"input": []}, 400, "input"),
    ({}, 400, "input"),
    ({"input": [{"type": "reasoning", "summary": []}]}, 400, "input[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, 400, "input[0].type"),
    ({"input": ["hi"]}, 400, "input[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, 400,
     "input[0].content[0].text"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, 400,
     "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, 400,
     "input[0].content[0].image_url"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "http://example.com/a.png"}]}]}, 400,
     "input[0].content[0].image_url"),
    ({"input": [{"role": "wizard", "content": "hi"}]}, 400, "input[0].role"),
    ({"input": [{"role": "user", "content": "hi"},
                {"type": "function_call_output", "call_id": "nope", "output": "1"}]}, 400,
     "input[1].call_id"),
    ({"input": [{"role": "user", "content": "hi"},
                {"type": "function_call", "call_id": "c", "name": "get_weather",
                 "arguments": "{bad"}], **TOOLS}, 400, "input[1].arguments"),
    ({"input": "hi", "previous_response_id": "resp_unknown"}, 404, "previous_response_id"),
])
def test_refusals_name_the_parameter(client, engine, body, status, param):
    r = post(client, **body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param, err
    assert engine.requests == []


def test_text_that_cannot_be_encoded_is_named_wherever_it_is(client, engine):
    def send(**body):
        return client.post(PATH, content=json.dumps({"model": MODEL, **body}),
                           headers={"content-type": "application/json"})

    bad = "a \ud800 b"
    for body, param in (
            ({"input": bad}, "input"),
            ({"input": "hi", "instructions": bad}, "instructions"),
            ({"input": [{"role": "user", "content": [{"type": "input_text", "text": bad}]}]},
             "input[0].content[0].text"),
            ({"input": [{"role": "user", "content": "hi", "id": bad}]}, "input[0].id"),
            ({"input": "hi", "metadata": {"k": bad}}, "metadata.k"),
            ({"input": "hi", "tools": [{**WEATHER, "description": bad}]},
             "tools[0].description")):
        r = send(**body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
    assert engine.requests == []


# --- streaming -------------------------------------------------------------------------------------
def test_streamed_text_events(client, engine):
    engine.queue_text("Hel", "lo")
    events = events_of(post(client, input="hi", stream=True))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    created, done = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert created["id"] == done["id"]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") \
        == "Hello" == events[6]["text"]
    item_id = events[2]["item"]["id"]
    assert all(e["item_id"] == item_id for e in events[3:8])
    assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == "Hello"
    assert done["usage"]["output_tokens"] == 2


def test_streamed_function_call_events(client, engine):
    engine.queue_text('{"name": "get_weather", ', '"parameters": {"city": "Oslo"}}')
    events = events_of(post(client, input="weather?", tools=[WEATHER], tool_choice="required",
                            stream=True))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    added, delta, args_done, item_done = events[2:6]
    assert added["item"]["type"] == "function_call" and added["item"]["arguments"] == ""
    assert json.loads(delta["delta"]) == {"city": "Oslo"} == json.loads(args_done["arguments"])
    assert item_done["item"]["status"] == "completed"
    assert events[-1]["response"]["output"] == [item_done["item"]]


def test_streamed_incomplete_response(client, engine):
    engine.queue_text("a", finish_reason="length")
    events = events_of(post(client, input="hi", stream=True, max_output_tokens=1))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_error_after_the_stream_began_is_an_error_event_then_failed(client, engine):
    from gemmakit.errors import EngineError

    engine.queue_error(EngineError("the engine broke"), after=["x"])
    events = events_of(post(client, input="hi", stream=True))
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["message"]
    rid = events[0]["response"]["id"]
    assert client.get(f"{PATH}/{rid}").status_code == 404  # a failed response is not stored


# --- the store ---------------------------------------------------------------------------------------
def test_retrieve_delete_and_store_false(client, engine):
    r = post(client, input="hi").json()
    got = client.get(f"{PATH}/{r['id']}")
    assert got.status_code == 200 and got.json() == r
    d = client.delete(f"{PATH}/{r['id']}")
    assert d.json() == {"id": r["id"], "object": "response", "deleted": True}
    for method in ("get", "delete"):
        gone = getattr(client, method)(f"{PATH}/{r['id']}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    unstored = post(client, input="hi", store=False).json()
    assert unstored["store"] is False
    assert client.get(f"{PATH}/{unstored['id']}").status_code == 404
    r = post(client, input="again", previous_response_id=unstored["id"])
    assert r.status_code == 404 and r.json()["error"]["code"] == "previous_response_not_found"


def test_streamed_response_is_stored(client, engine):
    engine.queue_text("ab")
    events = events_of(post(client, input="hi", stream=True))
    final = events[-1]["response"]
    assert client.get(f"{PATH}/{final['id']}").json() == final


def test_previous_response_id_continues_the_conversation(client, engine):
    engine.queue_text("I am Gemma.")
    first = post(client, input="Who are you?", instructions="Be terse.").json()
    engine.queue_text("Paris.")
    second = post(client, input="Capital of France?", previous_response_id=first["id"]).json()
    prompt = prompt_of(engine)
    assert prompt.index("Who are you?") < prompt.index("I am Gemma.") \
        < prompt.index("Capital of France?")
    assert "Be terse." not in prompt  # instructions are not carried over (as OpenAI does)
    assert second["previous_response_id"] == first["id"]
    # a chain survives the deletion of a response in its middle
    assert client.delete(f"{PATH}/{first['id']}").status_code == 200
    post(client, input="And of Italy?", previous_response_id=second["id"])
    prompt = prompt_of(engine)
    assert all(s in prompt for s in ("Who are you?", "I am Gemma.", "Capital of France?",
                                     "Paris.", "And of Italy?"))


def test_tool_round_trip_through_previous_response_id(client, engine):
    engine.queue_text('{"name": "get_weather", "parameters": {"city": "Lima"}}')
    first = post(client, input="Weather in Lima?", tools=[WEATHER], tool_choice="required").json()
    call = first["output"][0]
    engine.queue_text("Cloudy in Lima.")
    r = post(client, tools=[WEATHER], previous_response_id=first["id"], input=[
        {"type": "function_call_output", "call_id": call["call_id"], "output": "cloudy"}])
    assert r.status_code == 200, r.text
    assert r.json()["output"][0]["content"][0]["text"] == "Cloudy in Lima."
    assert "cloudy" in prompt_of(engine) and "Lima" in prompt_of(engine)


def test_stored_responses_are_scoped_to_their_key(make_client, engine, tmp_path):
    home = tmp_path / "home"
    keys = KeyStore(home)
    _, alice = keys.create("alice")
    _, bob = keys.create("bob")
    keys.close()
    c = make_client(engine, model_name=MODEL, home=home, auth=True)

    def as_(secret):
        return {"Authorization": f"Bearer {secret}"}

    r = c.post(PATH, json={"model": MODEL, "input": "secret plans"}, headers=as_(alice)).json()
    url = f"{PATH}/{r['id']}"
    assert c.get(url).status_code == 401
    assert c.get(url, headers=as_(alice)).status_code == 200
    assert c.get(url, headers=as_(bob)).status_code == 404
    assert c.delete(url, headers=as_(bob)).status_code == 404
    cont = c.post(PATH, json={"model": MODEL, "input": "more", "previous_response_id": r["id"]},
                  headers=as_(bob))
    assert cont.status_code == 404
    assert c.post(PATH, json={"model": MODEL, "input": "more", "previous_response_id": r["id"]},
                  headers=as_(alice)).status_code == 200
    assert c.delete(url, headers=as_(alice)).status_code == 200


def test_store_lives_in_the_data_directory(client, tmp_path):
    post(client, input="hi")
    path = tmp_path / "home" / "responses.sqlite3"
    assert path.exists() and path.stat().st_mode & 0o077 == 0


# --- the official client --------------------------------------------------------------------------
def test_official_client_create_stream_retrieve_delete(engine, tmp_path):
    from openai import NotFoundError, OpenAI

    from gemmakit.server.app import create_app
    from gemmakit.settings import Settings

    app = create_app(MODEL, lambda: engine, Settings.load(home=tmp_path / "home"))
    with uvicorn_thread(app) as base_url:
        client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
        engine.queue_text("Hi", "!")
        resp = client.responses.create(model=MODEL, input="hello", max_output_tokens=8)
        assert resp.output_text == "Hi!" and resp.status == "completed"
        engine.queue_text("Fine", ".")
        with client.responses.stream(model=MODEL, input="how are you?",
                                     previous_response_id=resp.id) as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        assert deltas == ["Fine", "."] and final.output_text == "Fine."
        engine.queue_text('{"name": "get_weather", "parameters": {"city": "Bern"}}')
        kinds = [e.type for e in client.responses.create(
            model=MODEL, input="weather?", tools=[WEATHER], tool_choice="required", stream=True)]
        assert "response.function_call_arguments.done" in kinds
        assert client.responses.retrieve(final.id).output_text == "Fine."
        client.responses.delete(final.id)
        with pytest.raises(NotFoundError):
            client.responses.retrieve(final.id)


def test_input_items_list_a_responses_own_input(client, engine):
    engine.queue_text("I am Gemma.")
    first = post(client, input="Who are you?").json()
    engine.queue_text("ok")
    second = post(client, previous_response_id=first["id"], input=[
        {"role": "user", "content": "one"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "two"}]},
        {"role": "user", "content": "three"}]).json()
    assert "id" in second, second
    url = f"{PATH}/{second['id']}/input_items"
    page = client.get(url, params={"order": "asc"}).json()
    # only this response's input, not the conversation before it
    texts = [i["content"][0]["text"] for i in page["data"]]
    assert texts == ["one", "two", "three"] and page["has_more"] is False
    assert all(i["type"] == "message" and i["id"] for i in page["data"])
    assert client.get(url).json()["data"][0]["content"][0]["text"] == "three"  # desc default
    # pages: limit, after, before
    p1 = client.get(url, params={"order": "asc", "limit": 2}).json()
    assert [i["content"][0]["text"] for i in p1["data"]] == ["one", "two"] and p1["has_more"]
    p2 = client.get(url, params={"order": "asc", "after": p1["last_id"]}).json()
    assert [i["content"][0]["text"] for i in p2["data"]] == ["three"]
    back = client.get(url, params={"order": "asc", "before": p2["first_id"]}).json()
    assert [i["id"] for i in back["data"]] == [i["id"] for i in p1["data"]]
    assert client.get(url, params={"order": "asc"}).json()["data"] == page["data"]  # stable ids
    for params, param in (({"limit": 0}, "limit"), ({"limit": "x"}, "limit"),
                          ({"order": "up"}, "order"), ({"after": "nope"}, "after")):
        r = client.get(url, params=params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert client.get(f"{PATH}/resp_unknown/input_items").status_code == 404


def test_official_client_lists_input_items(engine, tmp_path):
    from openai import OpenAI

    from gemmakit.server.app import create_app
    from gemmakit.settings import Settings

    app = create_app(MODEL, lambda: engine, Settings.load(home=tmp_path / "home"))
    with uvicorn_thread(app) as base_url:
        client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
        resp = client.responses.create(model=MODEL, input="hello")
        items = list(client.responses.input_items.list(resp.id))
        assert len(items) == 1 and items[0].type == "message"
        assert items[0].content[0].text == "hello"  # type: ignore[union-attr]
