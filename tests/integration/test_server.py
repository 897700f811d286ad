"""The real server with the bundled Gemma 3 270M, through the official `openai` client."""

from __future__ import annotations

import json

import openai
import pytest

from .conftest import MODEL

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Write a short sentence about the sea."}]


def test_health_and_models(http, client):
    r = http.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def _stream_chat(client, **kw):
    text, finish, roles, usage = "", None, [], None
    for ev in client.chat.completions.create(model=MODEL, stream=True, **kw):
        if ev.usage is not None:
            usage = ev.usage
        for ch in ev.choices:
            if ch.delta.role:
                roles.append(ch.delta.role)
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    return text, finish, roles, usage


def test_chat_stream_equals_non_stream_at_temperature_0(client):
    full = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24,
                                          temperature=0)
    text, finish, roles, usage = _stream_chat(client, messages=CHAT, max_tokens=24,
                                              temperature=0,
                                              stream_options={"include_usage": True})
    assert full.choices[0].message.content == text
    assert full.choices[0].finish_reason == finish
    assert roles == ["assistant"]
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens


def test_completion_stream_equals_non_stream(client):
    kw = dict(model=MODEL, prompt="The three primary colours are", max_tokens=20, temperature=0)
    full = client.completions.create(**kw)
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw)
                       if c.choices)
    assert full.choices[0].text == streamed
    assert full.usage.completion_tokens == 20 or full.choices[0].finish_reason == "stop"


def test_same_seed_same_text_and_seeds_differ(client):
    kw = dict(model=MODEL, prompt="My favourite animal is", max_tokens=16, temperature=1.0)
    a = client.completions.create(seed=1234, **kw).choices[0].text
    b = client.completions.create(seed=1234, **kw).choices[0].text
    assert a == b
    others = {client.completions.create(seed=s, **kw).choices[0].text for s in (1, 2, 3)}
    assert len(others | {a}) > 1, "different seeds should not all give the same sample"


def test_usage_counts_are_exact_tokens(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12,
                                       temperature=0, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    assert all(len(e.top_logprobs) == 3 for e in entries)
    # Greedy: the chosen token is the most likely one.
    for e in entries:
        assert e.logprob == pytest.approx(max(t.logprob for t in e.top_logprobs), abs=1e-6)
    # Prompt tokens: <bos> + turn markup + text, counted by the server's tokenizer.
    assert r.usage.prompt_tokens > 10


def test_ignore_eos_generates_exactly_max_tokens(client):
    r = client.completions.create(model=MODEL, prompt="Hi", max_tokens=40, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 40
    assert r.choices[0].finish_reason == "length"


def test_stop_sequence_is_never_emitted(client):
    kw = dict(model=MODEL, prompt="Count: one, two, three, four, five,", max_tokens=24,
              temperature=0)
    free = client.completions.create(**kw).choices[0].text
    # Pick a stop string from the middle of the free-running output, spanning tokens.
    assert len(free) > 10
    stop = free[4:9]
    cut = free[: free.index(stop)]
    r = client.completions.create(stop=[stop], **kw)
    assert r.choices[0].text == cut
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        stream=True, stop=[stop], **kw) if c.choices)
    assert streamed == cut


def test_n_choices(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, n=2, seed=7,
                                       temperature=1.0)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert 2 <= r.usage.completion_tokens <= 16  # both choices' tokens, 8 at most each
    streamed = {0: "", 1: ""}
    for ev in client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, n=2,
                                             seed=7, temperature=1.0, stream=True):
        for ch in ev.choices:
            streamed[ch.index] += ch.delta.content or ""
    assert streamed == {c.index: c.message.content for c in r.choices}


def test_multilingual_text_stays_valid_utf8(client):
    for prompt in ("日本の首都は", "中国的首都是", "عاصمة مصر هي", "Party time 🎉🎉"):
        kw = dict(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
        full = client.completions.create(**kw).choices[0].text
        pieces = [c.choices[0].text for c in client.completions.create(stream=True, **kw)
                  if c.choices]
        assert "".join(pieces) == full
        assert "\ufffd" not in full


def test_system_message_is_folded_not_dropped(client):
    with_sys = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=1,
        messages=[{"role": "system", "content": "Answer in French."}, *CHAT])
    without = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=1,
                                             messages=CHAT)
    # "Answer in French.\n\n" adds tokens to the first user turn.
    assert with_sys.usage.prompt_tokens > without.usage.prompt_tokens


def test_unknown_fields_are_served(http):
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": CHAT, "max_tokens": 2, "temperature": 0,
        "some_vendor_extra": {"x": 1}})
    assert r.status_code == 200, r.text


# --- errors -----------------------------------------------------------------------------------
def _error(exc_info) -> dict:
    body = exc_info.value.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    text = json.dumps(body)
    assert "Traceback" not in text and "/site-packages/" not in text and "/work/" not in text
    return body["error"]


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", 2.5), ("top_p", 0), ("top_p", 1.5),
    ("max_tokens", 0), ("n", 0), ("temperature", "hot"), ("presence_penalty", 3),
    ("top_logprobs", 21), ("stop", 5),
])
def test_out_of_range_parameters_are_400_with_param(client, field, value):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=MODEL, messages=CHAT, extra_body={field: value})
    err = _error(ei)
    assert ei.value.status_code == 400
    assert err["type"] == "invalid_request_error"
    assert err["param"] == field


def test_boundary_values_are_valid(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, top_p=1,
                                       max_tokens=1)
    assert r.usage.completion_tokens == 1


def test_empty_messages_is_400(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=MODEL, messages=[])
    assert _error(ei)["param"] == "messages"


def test_roles_must_alternate(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    err = _error(ei)
    assert err["param"] == "messages[1].role" and "alternate" in err["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    err = _error(ei)
    assert err["code"] == "model_not_found" and err["param"] == "model"


def test_context_length_exceeded_is_400_never_truncated(client):
    long = "word " * 5000  # far over the 4096-token context of the test server
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long}])
    err = _error(ei)
    assert err["code"] == "context_length_exceeded"
    assert "4096" in err["message"]
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=4096)
    err = _error(ei)
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"


def test_malformed_json_and_wrong_types_are_400_not_422(http):
    r = http.post("/v1/chat/completions", content=b'{"model": "x", "messages": [',
                  headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": "hello"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = http.post("/v1/completions", json={"model": MODEL})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_body_over_limit_is_413(http):
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    r = http.post("/v1/chat/completions", json=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_images_to_text_model_are_400_naming_the_part(client):
    png = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
           "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": png}}]}])
    err = _error(ei)
    assert err["param"] == "messages[0].content[1]" and "vision" in err["message"]


def test_every_response_has_a_request_id(http):
    r = http.get("/v1/models")
    assert r.headers["x-request-id"].startswith("req-")


def test_logit_bias_outside_the_vocabulary_is_400(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2,
                                  logit_bias={"999999999": 5})
    assert _error(ei)["param"] == "logit_bias"
