"""Every error leaves the server as the OpenAI error object (server/errors.py), checked through the
real app built by `create_app` around the fake engine (tests/conftest.py)."""

from __future__ import annotations

import json
import re

import pytest

from gemmakit.errors import ContextLengthExceededError, InvalidRequestError
from gemmakit.server.errors import param_from_loc

MODEL = "gemma-test"
CHAT = "/v1/chat/completions"
# Tokens of the spec'd prompt "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
# with the fake tokenizer (one id per control token, one per character): 4 + len("user\nhi\nmodel\n").
HI_PROMPT_TOKENS = 4 + len("user\nhi\nmodel\n")
RID = re.compile(r"req-[0-9a-f]+")


def chat_body(**kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    body.update(kw)
    return body


def assert_openai_error(r, status, *, param=..., code=..., type_=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if param is not ...:
        assert err["param"] == param, err
    if code is not ...:
        assert err["code"] == code, err
    if type_ is not None:
        assert err["type"] == type_
    assert "Traceback" not in r.text
    assert "/work/" not in r.text
    assert 'File "' not in r.text
    return err


# --- param_from_loc ---------------------------------------------------------------------------
@pytest.mark.parametrize("loc, param", [
    (("body", "messages", 0, "content", "str"), "messages[0].content"),
    (("body", "temperature"), "temperature"),
    (("body", "messages"), "messages"),
    (("body", "messages", 2, "role"), "messages[2].role"),
    (("body", "stop", "str"), "stop"),
    (("body", "stop", "list[str]", 1), "stop"),
    (("body", "messages", 0, "content", "list[tagged-union[TextContent,ImageContent]]", 1),
     "messages[0].content"),
    (("body", "logit_bias", "function-after[_check(), dict[str,float]]"), "logit_bias"),
    (("body", "stream_options", "include_usage"), "stream_options.include_usage"),
    (("body",), None),
    ((), None),
])
def test_param_from_loc(loc, param):
    assert param_from_loc(loc) == param


# --- validation errors through the app --------------------------------------------------------
@pytest.mark.parametrize("extra, param", [
    ({"temperature": 3}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"n": 0}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"stop": 5}, "stop"),
    ({"stream": "maybe"}, "stream"),
])
def test_invalid_chat_values_are_400_with_param(make_client, extra, param):
    c = make_client()
    err = assert_openai_error(c.post(CHAT, json=chat_body(**extra)), 400, param=param,
                              type_="invalid_request_error")
    assert param.split("[")[0] in err["message"]


def test_missing_model_field(make_client):
    c = make_client()
    r = c.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(r, 400, param="model")


@pytest.mark.parametrize("extra, param", [
    ({"temperature": 3}, "temperature"),
    ({"prompt": []}, "prompt"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"logprobs": 21}, "logprobs"),
])
def test_invalid_completion_values_are_400_with_param(make_client, extra, param):
    c = make_client()
    body = {"model": MODEL, "prompt": "Once", **extra}
    assert_openai_error(c.post("/v1/completions", json=body), 400, param=param)


@pytest.mark.parametrize("content", [b"{bad json", b'{"model": "gemma-test",', b"\xff\xfe"])
def test_malformed_json_body(make_client, content):
    c = make_client()
    r = c.post(CHAT, content=content, headers={"content-type": "application/json"})
    assert_openai_error(r, 400, param=None, code="invalid_json", type_="invalid_request_error")


def test_json_that_is_not_an_object(make_client):
    c = make_client()
    r = c.post(CHAT, content=b"[1, 2]", headers={"content-type": "application/json"})
    assert_openai_error(r, 400)


# --- domain errors through the app ------------------------------------------------------------
def test_conversation_error_from_the_prompt_format(make_client):
    c = make_client()
    r = c.post(CHAT, json=chat_body(messages=[{"role": "user", "content": "a"},
                                              {"role": "user", "content": "b"}]))
    assert_openai_error(r, 400, param="messages[1].role", type_="invalid_request_error")


def test_semantic_sampling_errors(make_client):
    c = make_client()
    assert_openai_error(c.post(CHAT, json=chat_body(top_logprobs=2)), 400, param="top_logprobs")
    assert_openai_error(c.post(CHAT, json=chat_body(tools=[{"type": "function", "function": {
        "name": "not a name", "parameters": {}}}])), 400, param="tools[0].function.name")
    assert_openai_error(c.post("/v1/completions", json={
        "model": MODEL, "prompt": "x", "max_tokens": 0}), 400, param="max_tokens")


def test_image_to_a_text_only_model_is_unsupported(make_client):
    c = make_client()
    r = c.post(CHAT, json=chat_body(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]))
    assert_openai_error(r, 400, param="messages[0].content[1]", code="unsupported")


def test_other_model_name_is_404(make_client):
    c = make_client()
    for path, body in [(CHAT, chat_body(model="gpt-4o")),
                       ("/v1/completions", {"model": "gpt-4o", "prompt": "x"})]:
        err = assert_openai_error(c.post(path, json=body), 404, param="model",
                                  code="model_not_found")
        assert "gpt-4o" in err["message"]
    assert_openai_error(c.get("/v1/models/gpt-4o"), 404, code="model_not_found")


def test_unknown_route_and_method_are_openai_errors(make_client):
    c = make_client()
    assert_openai_error(c.get("/v1/nothing-here"), 404, code="not_found")
    assert_openai_error(c.get(CHAT), 405, code="method_not_allowed")


def test_context_length_exceeded(make_client, fake_engine_class):
    ctx = 64
    engine = fake_engine_class(context_length=ctx)
    c = make_client(engine)
    room = ctx - HI_PROMPT_TOKENS
    # exactly full is allowed ...
    r = c.post(CHAT, json=chat_body(max_tokens=room))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == HI_PROMPT_TOKENS
    assert engine.requests[-1].sampling.max_tokens == room
    # ... one more is not, and nothing reaches the engine
    n_before = len(engine.requests)
    for body in [chat_body(max_tokens=room + 1), chat_body(max_completion_tokens=1000)]:
        r = c.post(CHAT, json=body)
        err = assert_openai_error(r, 400, code="context_length_exceeded", param="messages")
        assert str(ctx) in err["message"]
    assert len(engine.requests) == n_before


def test_prompt_filling_the_context_without_max_tokens(make_client, fake_engine_class):
    c = make_client(fake_engine_class(context_length=HI_PROMPT_TOKENS))
    assert_openai_error(c.post(CHAT, json=chat_body()), 400, code="context_length_exceeded")
    c = make_client(fake_engine_class(context_length=HI_PROMPT_TOKENS + 1))
    assert c.post(CHAT, json=chat_body()).status_code == 200


def test_completion_context_length_exceeded_names_prompt(make_client, fake_engine_class):
    c = make_client(fake_engine_class(context_length=32))
    r = c.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 40})
    assert_openai_error(r, 400, code="context_length_exceeded", param="prompt")


def test_completion_token_ids_outside_the_vocabulary(make_client, fake_engine):
    c = make_client(fake_engine)
    r = c.post("/v1/completions", json={"model": MODEL, "prompt": [1, fake_engine.n_vocab]})
    assert_openai_error(r, 400, param="prompt")


# --- body size ----------------------------------------------------------------------------------
def _big_body() -> dict:
    return chat_body(messages=[{"role": "user", "content": "x" * 3000}])


def test_body_over_the_limit_is_413(make_client, fake_engine):
    c = make_client(fake_engine, max_body_bytes=2048)
    r = c.post(CHAT, json=_big_body())
    assert_openai_error(r, 413, code="request_too_large")
    assert fake_engine.requests == []
    # a body under the limit still works
    assert c.post(CHAT, json=chat_body()).status_code == 200


def test_chunked_body_over_the_limit_is_413(make_client, fake_engine):
    c = make_client(fake_engine, max_body_bytes=2048)

    def chunks():
        for _ in range(10):
            yield b" " * 512  # valid JSON whitespace, no content-length sent

    r = c.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_openai_error(r, 413, code="request_too_large")


# --- internal errors ----------------------------------------------------------------------------
SECRET = "secret-detail in /work/main/src/gemmakit/engines/x.py Traceback (most recent call last)"


def test_engine_failure_is_500_with_request_id_and_no_details(make_client, fake_engine):
    c = make_client(fake_engine)
    fake_engine.queue_error(RuntimeError(SECRET), after=["partial"])
    r = c.post(CHAT, json=chat_body())
    err = assert_openai_error(r, 500, param=None, code="internal_error", type_="server_error")
    assert "secret" not in r.text
    assert RID.search(err["message"])
    # the server keeps serving
    assert c.post(CHAT, json=chat_body()).status_code == 200


def test_engine_failure_500_carries_the_request_id_header(make_client, fake_engine):
    c = make_client(fake_engine)
    fake_engine.queue_error(RuntimeError(SECRET))
    r = c.post(CHAT, json=chat_body())
    assert r.status_code == 500
    assert r.headers.get("x-request-id") == RID.search(r.json()["error"]["message"]).group(0)


def test_domain_500_includes_request_id(make_client, fake_engine):
    from gemmakit.errors import EngineError

    c = make_client(fake_engine)
    fake_engine.queue_error(EngineError("the engine stopped"))
    r = c.post(CHAT, json=chat_body())
    err = assert_openai_error(r, 500, code="internal_error")
    assert RID.search(err["message"])
    assert r.headers["x-request-id"] in err["message"]


def test_streaming_engine_failure_ends_with_error_event_and_done(make_client, fake_engine):
    c = make_client(fake_engine)
    fake_engine.queue_error(RuntimeError(SECRET), after=["Hel", "lo"])
    r = c.post(CHAT, json=chat_body(stream=True))
    assert r.status_code == 200
    data = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    last = json.loads(data[-2])
    assert set(last) == {"error"}
    assert last["error"]["code"] == "internal_error"
    assert RID.search(last["error"]["message"])
    assert "secret" not in r.text and "Traceback" not in r.text and "/work/" not in r.text


def test_streaming_domain_error_keeps_its_fields(make_client, fake_engine):
    c = make_client(fake_engine)
    fake_engine.queue_error(InvalidRequestError("bad thing", param="stop"), after=["a"])
    r = c.post(CHAT, json=chat_body(stream=True))
    data = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert json.loads(data[-2]) == {"error": {"message": "bad thing",
                                              "type": "invalid_request_error",
                                              "param": "stop", "code": None}}


def test_context_length_error_message_has_no_prompt_text():
    e = ContextLengthExceededError(prompt_tokens=10, max_tokens=5, context_length=12)
    assert "15" in e.message and "12" in e.message
    assert e.status == 400 and e.code == "context_length_exceeded"
