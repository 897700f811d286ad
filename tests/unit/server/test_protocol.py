"""OpenAI request models (server/protocol.py): validation ranges and conversion to core types."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from gemmakit.errors import InvalidRequestError
from gemmakit.prompts import render_chat
from gemmakit.server.protocol import ChatCompletionRequest, CompletionRequest
from gemmakit.types import AudioPart, ImagePart, Message, SamplingParams, TextPart, ToolCall

MSGS = [{"role": "user", "content": "hi"}]
PNG = b"\x89PNG\r\n\x1a\n\x00\x00fake"


def chat(**kw) -> ChatCompletionRequest:
    kw.setdefault("messages", MSGS)
    return ChatCompletionRequest(model="m", **kw)


def completion(**kw) -> CompletionRequest:
    kw.setdefault("prompt", "Once")
    return CompletionRequest(model="m", **kw)


def refused_field(exc: ValidationError) -> tuple:
    return exc.errors()[0]["loc"]


# --- ranges -----------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [chat, completion])
@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", 2.1), ("top_p", 0), ("top_p", 1.01),
    ("max_tokens", 0), ("max_tokens", -5), ("n", 0), ("n", 17), ("presence_penalty", 2.5),
    ("frequency_penalty", -2.5), ("min_p", 1.5), ("top_k", -2), ("seed", -1),
    ("repetition_penalty", 0), ("temperature", "hot"),
])
def test_out_of_range_values_rejected(make, field, value):
    if make is completion and (field, value) == ("max_tokens", 0):
        # a completion may ask for 0 tokens, to score its prompt with echo; without it, 400
        with pytest.raises(InvalidRequestError) as e:
            completion(max_tokens=0).check_supported()
        assert e.value.param == "max_tokens"
        completion(max_tokens=0, echo=True).check_supported()
        return
    with pytest.raises(ValidationError) as ei:
        make(**{field: value})
    assert refused_field(ei.value)[0] == field


def test_echo_with_logprobs_asks_the_engine_to_score_the_prompt():
    assert completion(echo=True, logprobs=3).sampling().prompt_logprobs == 3
    assert completion(echo=True).sampling().prompt_logprobs is None
    assert completion(logprobs=3).sampling().prompt_logprobs is None


@pytest.mark.parametrize("make", [chat, completion])
@pytest.mark.parametrize("field, value", [
    ("temperature", 0), ("temperature", 2), ("temperature", 0.7), ("top_p", 1), ("top_p", 0.01),
    ("max_tokens", 1), ("n", 1), ("n", 16), ("top_k", -1), ("top_k", 0), ("seed", 0),
])
def test_boundary_values_accepted(make, field, value):
    req = make(**{field: value})
    assert getattr(req, field) == value
    assert getattr(req.sampling(), field) == value


def test_empty_messages_rejected():
    with pytest.raises(ValidationError) as ei:
        chat(messages=[])
    assert refused_field(ei.value)[0] == "messages"


def test_missing_model_rejected():
    with pytest.raises(ValidationError):
        ChatCompletionRequest(messages=MSGS)


def test_unknown_role_rejected():
    with pytest.raises(ValidationError):
        chat(messages=[{"role": "narrator", "content": "x"}])


def test_max_completion_tokens_zero_rejected():
    with pytest.raises(ValidationError):
        chat(max_completion_tokens=0)


def test_top_logprobs_range():
    with pytest.raises(ValidationError):
        chat(logprobs=True, top_logprobs=21)
    assert chat(logprobs=True, top_logprobs=20).sampling().top_logprobs == 20


def test_empty_completion_prompt_list_rejected():
    with pytest.raises(ValidationError):
        completion(prompt=[])


def test_unknown_fields_accepted_everywhere():
    req = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "hi", "vendor_extra": 1}],
        some_vendor_field={"a": 1}, another=True)
    assert req.model_extra == {"some_vendor_field": {"a": 1}, "another": True}
    assert req.to_messages() == [Message("user", "hi")]
    assert completion(mystery=3).prompts() == ["Once"]


# --- sampling() -------------------------------------------------------------------------------
def test_sampling_defaults_are_the_core_defaults():
    assert chat().sampling() == SamplingParams()
    assert completion().sampling() == SamplingParams()


def test_sampling_maps_every_field():
    sp = chat(max_tokens=7, temperature=0.5, top_p=0.9, top_k=40, min_p=0.05,
              repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=-0.5, seed=42,
              stop=["a", "b"], n=3, ignore_eos=True, logit_bias={"17": -100, "5": 2.5},
              logprobs=True, top_logprobs=4).sampling()
    assert isinstance(sp, SamplingParams)
    assert sp == SamplingParams(
        max_tokens=7, temperature=0.5, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1,
        presence_penalty=0.5, frequency_penalty=-0.5, seed=42, stop=["a", "b"], n=3,
        ignore_eos=True, logit_bias={17: -100.0, 5: 2.5}, logprobs=True, top_logprobs=4)


def test_stop_string_becomes_a_list():
    assert chat(stop="\n\n").sampling().stop == ["\n\n"]
    assert chat(stop=None).sampling().stop == []


@pytest.mark.parametrize("stop", ["", ["ok", ""]])
def test_empty_stop_sequence_refused(stop):
    with pytest.raises(InvalidRequestError) as ei:
        chat(stop=stop).sampling()
    assert ei.value.param == "stop"


def test_too_many_stop_sequences_refused():
    with pytest.raises(InvalidRequestError) as ei:
        chat(stop=[f"s{i}" for i in range(17)]).sampling()
    assert ei.value.param == "stop"
    assert len(chat(stop=[f"s{i}" for i in range(16)]).sampling().stop) == 16


def test_max_completion_tokens_sets_max_tokens():
    assert chat(max_completion_tokens=12).sampling().max_tokens == 12
    assert chat(max_completion_tokens=12, max_tokens=12).sampling().max_tokens == 12


def test_disagreeing_max_tokens_refused():
    with pytest.raises(InvalidRequestError) as ei:
        chat(max_completion_tokens=12, max_tokens=13).sampling()
    assert ei.value.param == "max_completion_tokens"


def test_top_logprobs_without_logprobs_refused():
    with pytest.raises(InvalidRequestError) as ei:
        chat(top_logprobs=3).sampling()
    assert ei.value.param == "top_logprobs"
    assert "logprobs" in ei.value.message


def test_logprobs_alone():
    sp = chat(logprobs=True).sampling()
    assert sp.logprobs and sp.top_logprobs == 0


@pytest.mark.parametrize("key", ["abc", "-1", "1.5", " 3"])
def test_logit_bias_keys_must_be_token_ids(key):
    with pytest.raises(InvalidRequestError) as ei:
        chat(logit_bias={key: 1}).sampling()
    assert ei.value.param == "logit_bias"


def test_logit_bias_value_range():
    with pytest.raises(ValidationError):
        chat(logit_bias={"1": 101})


def test_completion_logprobs_is_a_count():
    sp = completion(logprobs=3).sampling()
    assert sp.logprobs is True and sp.top_logprobs == 3
    sp = completion(logprobs=0).sampling()
    assert sp.logprobs is True and sp.top_logprobs == 0
    assert completion().sampling().logprobs is False


def test_include_usage_only_when_streaming():
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage
    assert not chat(stream=False, stream_options={"include_usage": True}).include_usage
    assert not chat(stream=True).include_usage


# --- check_supported() ------------------------------------------------------------------------
def test_tools_and_response_format_are_left_to_the_tool_plan():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    chat(tools=tools, tool_choice="required", parallel_tool_calls=False,
         response_format={"type": "json_object"}).check_supported()
    chat().check_supported()


@pytest.mark.parametrize("field, value", [("suffix", "end"), ("best_of", 3)])
def test_completion_unsupported_fields_refused(field, value):
    with pytest.raises(InvalidRequestError) as ei:
        completion(**{field: value}).check_supported()
    assert ei.value.param == field


def test_completion_supported_fields_pass():
    completion(best_of=2, n=2).check_supported()
    completion(echo=False, suffix="").check_supported()
    completion(echo=True, logprobs=1, max_tokens=0).check_supported()


# --- prompts() --------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, expected", [
    ("text", ["text"]),
    (["a", "b"], ["a", "b"]),
    ([1, 2, 3], [[1, 2, 3]]),
    ([[1, 2], [3]], [[1, 2], [3]]),
])
def test_completion_prompt_forms(prompt, expected):
    assert completion(prompt=prompt).prompts() == expected


def test_negative_token_id_rejected():
    with pytest.raises(ValidationError):
        completion(prompt=[1, -2])


# --- to_messages() ----------------------------------------------------------------------------
def test_developer_is_rendered_as_system():
    msgs = chat(messages=[{"role": "developer", "content": "rules"},
                          {"role": "user", "content": "hi"}]).to_messages()
    assert msgs == [Message("developer", "rules"), Message("user", "hi")]
    as_system = [Message("system", "rules"), Message("user", "hi")]
    assert render_chat(msgs).segments == render_chat(as_system).segments


def test_roles_and_names_kept():
    msgs = chat(messages=[{"role": "system", "content": "s"},
                          {"role": "user", "content": "u", "name": "alice"},
                          {"role": "assistant", "content": None},
                          {"role": "user", "content": "v"}]).to_messages()
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1].name == "alice"
    assert msgs[2].content is None


def test_data_url_image_decoded():
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    msgs = chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
    ]}]).to_messages()
    assert msgs[0].content == [TextPart("what is this?"), ImagePart(PNG, "image/png")]


def test_data_url_without_mime_type():
    url = "data:;base64," + base64.b64encode(PNG).decode()
    (part,) = chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}]).to_messages()[0].content
    assert isinstance(part, ImagePart) and part.data == PNG


@pytest.mark.parametrize("url", [
    "data:image/png;base64,@@not base64!!",
    "data:image/png;base64,abc",            # bad padding
    "https://example.com/cat.png",          # remote URLs are not fetched
    "data:image/png,rawbytes",              # not base64
])
def test_bad_image_url_refused_naming_the_part(url):
    req = chat(messages=[
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "x"},
                                     {"type": "image_url", "image_url": {"url": url}}]}])
    with pytest.raises(InvalidRequestError) as ei:
        req.to_messages()
    assert ei.value.param == "messages[1].content[1].image_url.url"


def test_audio_decoded_and_bad_audio_refused():
    good = base64.b64encode(b"RIFFwav").decode()
    (part,) = chat(messages=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": good, "format": "wav"}}]}]
    ).to_messages()[0].content
    assert part == AudioPart(b"RIFFwav", "wav")
    req = chat(messages=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]}])
    with pytest.raises(InvalidRequestError) as ei:
        req.to_messages()
    assert ei.value.param == "messages[0].content[0].input_audio.data"


def test_tool_messages_and_tool_calls_are_converted():
    req = chat(messages=[{"role": "user", "content": "a"},
                         {"role": "assistant", "content": None, "tool_calls": [
                             {"id": "c1", "type": "function",
                              "function": {"name": "f", "arguments": "{}"}}]},
                         {"role": "tool", "content": "42", "tool_call_id": "c1"}])
    _, assistant, tool = req.to_messages()
    assert assistant.tool_calls == (ToolCall("c1", "f", "{}"),)
    assert (tool.role, tool.content, tool.tool_call_id) == ("tool", "42", "c1")


def test_tool_calls_on_a_user_message_refused():
    req = chat(messages=[{"role": "user", "content": "a", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}])
    with pytest.raises(InvalidRequestError) as ei:
        req.to_messages()
    assert ei.value.param == "messages[0].tool_calls"


def test_user_message_without_content_refused():
    req = chat(messages=[{"role": "user"}])
    with pytest.raises(InvalidRequestError) as ei:
        req.to_messages()
    assert ei.value.param == "messages[0].content"


def test_unknown_fields_are_logged_at_debug(caplog):
    with caplog.at_level("DEBUG", logger="gemmakit.server.protocol"):
        chat(vendor_knob=1)
    assert "vendor_knob" in caplog.text
