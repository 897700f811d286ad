"""Structured outputs as libraries ask for them, through the official client on the real server:
`client.chat.completions.parse(response_format=Model)` (openai's strict JSON schema of a pydantic
model: numeric bounds, enums, dates and times, Optional nested models, patterns) and
`openai.pydantic_function_tool(Model)` with a forced call. Each reply must parse as the model."""

from __future__ import annotations

import json

import openai
import pytest

from tests.data.pydantic_models import City, Meeting, Person, Task, WeatherReport

MODEL = "gemma-3-270m"


def _ask(model: type) -> list[dict]:
    return [{"role": "user", "content": f"Extract a {model.__name__} as JSON: {model.__doc__}"}]


@pytest.mark.parametrize("model", [City, WeatherReport, Meeting, Person])
def test_parse_with_a_pydantic_response_format(client, model):
    r = client.chat.completions.parse(model=MODEL, messages=_ask(model), response_format=model,
                                      max_tokens=160, temperature=0)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "stop", msg.content
    assert isinstance(msg.parsed, model)  # the client validated it with pydantic
    assert model.model_validate_json(msg.content or "") == msg.parsed


def test_a_pydantic_function_tool_forced(client):
    tool = openai.pydantic_function_tool(Meeting, name="schedule_meeting",
                                         description="Put a meeting in the calendar.")
    r = client.chat.completions.parse(
        model=MODEL, tools=[tool], tool_choice="required", max_tokens=96, temperature=0,
        messages=[{"role": "user", "content": "Book the design review: 3 March 2025 at "
                                              "14:30, 45 minutes."}])
    calls = r.choices[0].message.tool_calls
    assert calls and r.choices[0].finish_reason == "tool_calls"
    for call in calls:
        assert call.function.name == "schedule_meeting"
        assert isinstance(call.function.parsed_arguments, Meeting)
        assert Meeting.model_validate(json.loads(call.function.arguments))


def test_a_strict_tool_with_a_keyword_the_grammar_cannot_enforce_is_refused(client):
    """Task's `tags: set[str]` is `uniqueItems`: checked after generation at most, so a strict
    tool (which pydantic_function_tool makes) is a 400 naming it, before anything runs."""
    tool = openai.pydantic_function_tool(Task, name="create_task")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.parse(model=MODEL, tools=[tool], tool_choice="required",
                                      max_tokens=96, messages=_ask(Task))
    assert "uniqueItems" in str(e.value) and "tools[0]" in str(e.value.body)
