"""The Responses API on the real server with the bundled Gemma 3 270M, through the official
`openai` client: create (streamed and not), a forced function call, a json_schema answer,
previous_response_id chaining (a tool round trip included), retrieve and delete. What is asserted
is what gemmakit guarantees, not the small model's judgement."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from .conftest import MODEL

pytestmark = pytest.mark.integration

WEATHER_PARAMS = {"type": "object", "properties": {
    "location": {"type": "string", "maxLength": 30},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["location", "unit"], "additionalProperties": False}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": WEATHER_PARAMS, "strict": True}
ASK = "What's the weather in Tokyo?"


def test_create(client):
    r = client.responses.create(model=MODEL, input="Say hello.", instructions="Be brief.",
                                max_output_tokens=16, temperature=0)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == MODEL
    assert r.status in ("completed", "incomplete")
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens"
        assert r.usage.output_tokens == 16
    assert r.output[0].type == "message" and r.output_text.strip()
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert 0 < r.usage.output_tokens <= 16 and r.instructions == "Be brief."


def test_stream_rebuilds_the_response(client):
    kw = dict(model=MODEL, input="Name three colours.", max_output_tokens=16, temperature=0)
    events = list(client.responses.create(stream=True, **kw))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert text == done.text == final.output_text and text
    assert final.usage.output_tokens <= 16
    # greedy: the same text as the non-streamed response
    assert client.responses.create(**kw).output_text == text


FORCED = dict(model=MODEL, input=ASK, tools=[WEATHER], tool_choice="required",
              parallel_tool_calls=False, max_output_tokens=48, temperature=0)


@pytest.fixture(scope="module")
def forced(client):
    """One forced call, shared (a budgeted call grammar is the slow part on a busy CPU)."""
    return client.responses.create(**FORCED)


def test_forced_function_call(client, forced):
    r = forced
    assert r.status == "completed"
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMS)
    events = list(client.responses.create(stream=True, **FORCED))
    args = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert args.arguments == call.arguments
    assert "".join(e.delta for e in events
                   if e.type == "response.function_call_arguments.delta") == call.arguments
    item = next(e.item for e in events if e.type == "response.output_item.done")
    assert item.type == "function_call" and item.name == "get_weather"


def test_json_schema_text_format_is_valid(client):
    schema = {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20},
        "temperature_c": {"type": "integer", "minimum": -50, "maximum": 60},
        "sky": {"type": "string", "enum": ["clear", "cloudy", "rain"]}},
        "required": ["city", "temperature_c", "sky"], "additionalProperties": False}
    r = client.responses.create(
        model=MODEL, input=ASK, max_output_tokens=64, temperature=0,
        text={"format": {"type": "json_schema", "name": "weather", "schema": schema,
                         "strict": True}})
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), schema)
    assert r.text.format.type == "json_schema" and r.text.format.name == "weather"


def test_previous_response_id_retrieve_and_delete(client):
    first = client.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=12,
                                    temperature=0)
    second = client.responses.create(model=MODEL, input="What is my name?",
                                     previous_response_id=first.id, max_output_tokens=12,
                                     temperature=0)
    assert second.previous_response_id == first.id
    # the earlier turn (its input and its reply) is in the prompt
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    got = client.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == second.output_text
    assert got.usage.input_tokens == second.usage.input_tokens
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    # the chain lives on in the later response
    third = client.responses.create(model=MODEL, input="Thanks.", max_output_tokens=4,
                                    previous_response_id=second.id, temperature=0)
    assert third.usage.input_tokens > second.usage.input_tokens
    unstored = client.responses.create(model=MODEL, input="hi", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_tool_round_trip_through_previous_response_id(client, forced):
    first = forced
    call = first.output[0]
    result = [{"type": "function_call_output", "call_id": call.call_id,
               "output": json.dumps({"temperature_c": 21, "sky": "clear"})}]
    r = client.responses.create(model=MODEL, tools=[WEATHER], previous_response_id=first.id,
                                max_output_tokens=16, temperature=0, tool_choice="none",
                                input=result)
    assert r.output[0].type == "message" and r.output_text
    # without the stored call before it, the same result answers nothing
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, tools=[WEATHER], max_output_tokens=16,
                                input=[{"role": "user", "content": ASK}, *result])
    assert e.value.body["param"] == "input[1].call_id"


def test_refusals_reach_the_client_as_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    assert e.value.body["param"] == "tools[0].type"
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_missing")
    assert e.value.body["code"] == "previous_response_not_found"
