"""The safety layer through the real app (fake engine): keys, scopes, rate limits and their
headers, usage, validation, content policy on input and on the output stream, header limits."""

from __future__ import annotations

import base64
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from gemmakit.safety.auth import KeyStore

MODEL = "gemma-test"
CHAT = "/v1/chat/completions"


def chat(content="hi", **kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **kw}


def bearer(secret):
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def keys(home):
    store = KeyStore(home)
    yield store
    store.close()


@pytest.fixture
def secure(make_client, fake_engine, home):
    """make(**settings) -> a client for an --auth app around the fake engine."""
    def make(**kw):
        return make_client(fake_engine, model_name=MODEL, home=home, auth=True, **kw)
    return make


def assert_error(r, status, code=None, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err


# --- keys ---------------------------------------------------------------------------------------
def _protected_calls(app):
    """Every /v1/* route of the app, with a method and a body that would otherwise succeed."""
    calls = []
    for path, ops in app.openapi()["paths"].items():
        if path.startswith("/v1"):
            calls += [(m.upper(), path.replace("{model_id}", MODEL)) for m in ops]
    return calls


def test_401_on_every_protected_route_without_a_valid_key(secure, keys):
    _, secret = keys.create("alice")
    c = secure()
    calls = _protected_calls(c.app)
    assert {("POST", CHAT), ("POST", "/v1/completions"), ("GET", "/v1/models"),
            ("GET", "/v1/usage")} <= set(calls)
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    changed = secret.upper() if secret.upper() != secret else secret.lower()
    for method, path in calls:
        body = None if method != "POST" else (
            {"model": MODEL, "prompt": "hi"} if path == "/v1/completions" else
            {"model": MODEL, "input": "hi"} if path == "/v1/responses" else chat())
        for headers in ({}, bearer(wrong), bearer(changed), {"x-api-key": changed},
                        {"Authorization": secret}, bearer("gk-000000000000-" + "x" * 43)):
            r = c.request(method, path, json=body, headers=headers)
            err = assert_error(r, 401, "invalid_api_key")
            assert secret not in r.text and changed not in err["message"]
        # With the key, the request gets past the guard: 200, or for the audio routes (which
        # take multipart uploads, not this JSON body) and the adapter admin routes (which take
        # {"lora_name"}; this server serves no adapters) the route's own 400.
        # A stored response's route answers 404 for the literal "{response_id}".
        ok = {400} if path.startswith(("/v1/audio/", "/v1/adapters/")) else {404} \
            if "{response_id}" in path else {200}
        assert c.request(method, path, json=body, headers=bearer(secret)).status_code in ok
        assert c.request(method, path, json=body,
                         headers={"x-api-key": secret}).status_code in ok


def test_public_routes_stay_public(secure, keys):
    c = secure()
    assert c.get("/health").status_code == 200
    assert c.get("/metrics").status_code != 401  # public unless --metrics-auth
    c2 = secure(metrics_auth=True)
    assert_error(c2.get("/metrics"), 401)
    assert_error(c.get("/admin/anything"), 401)


def test_revoked_expired_and_rotated_keys_are_refused(secure, keys):
    _, old = keys.create("bob")
    _, new = keys.rotate("bob")
    _, gone = keys.create("carol")
    keys.revoke("carol")
    _, late = keys.create("dave", expires_at=1.0)
    c = secure()
    assert_error(c.get("/v1/models", headers=bearer(old)), 401)
    assert c.get("/v1/models", headers=bearer(new)).status_code == 200
    assert "revoked" in assert_error(c.get("/v1/models", headers=bearer(gone)), 401)["message"]
    assert "expired" in assert_error(c.get("/v1/models", headers=bearer(late)), 401)["message"]


def test_403_for_a_model_outside_the_key_scope(secure, keys):
    _, scoped = keys.create("scoped", models=["other-model"])
    _, fine = keys.create("fine", models=[MODEL])
    c = secure()
    assert_error(c.post(CHAT, json=chat(), headers=bearer(scoped)), 403, "model_not_allowed",
                 "model")
    assert c.post(CHAT, json=chat(), headers=bearer(fine)).status_code == 200


def test_scoped_key_sees_only_its_models(keys, secure):
    _, scoped = keys.create("scoped", models=["other-model"])
    _, fine = keys.create("fine", models=[MODEL])
    c = secure()
    assert c.get("/v1/models", headers=bearer(scoped)).json()["data"] == []
    assert_error(c.get(f"/v1/models/{MODEL}", headers=bearer(scoped)), 404, "model_not_found",
                 "model")
    assert [m["id"] for m in c.get("/v1/models", headers=bearer(fine)).json()["data"]] == [MODEL]
    assert c.get(f"/v1/models/{MODEL}", headers=bearer(fine)).status_code == 200


def test_keys_are_stored_hashed(keys, home):
    _, secret = keys.create("hashed")
    data = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert secret.encode() not in data
    assert secret.split("-", 2)[2].encode() not in data  # gk-<key id>-<secret part>


# --- rate limits ----------------------------------------------------------------------------------
def test_rpm_burst_at_twice_the_limit(secure, keys):
    _, a = keys.create("a", rpm=10)
    _, b = keys.create("b", rpm=10)
    c = secure()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: c.get("/v1/models", headers=bearer(a)).status_code,
                              range(20)))
    assert codes.count(200) <= 10 * 1.05 and codes.count(200) >= 10
    assert set(codes) == {200, 429}
    r = c.get("/v1/models", headers=bearer(a))
    assert assert_error(r, 429, "rate_limit_exceeded")["type"] == "requests"
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    # the other key is unaffected
    r = c.get("/v1/models", headers=bearer(b))
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit-requests"] == "10"
    assert r.headers["x-ratelimit-remaining-requests"] == "9"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")


def test_tpm_burst_at_twice_the_limit_reserves_up_front(secure, keys, fake_engine):
    tpm = 600
    _, a = keys.create("a", tpm=tpm)
    _, b = keys.create("b", tpm=tpm)
    c = secure()
    max_tokens = 8
    fake_engine.default_reply = fake_engine.text_reply(*("x" * max_tokens))
    probe = c.post(CHAT, json=chat(max_tokens=max_tokens), headers=bearer(b)).json()
    per_request = probe["usage"]["total_tokens"]
    n = 2 * tpm // per_request + 2
    with ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda _: c.post(CHAT, json=chat(max_tokens=max_tokens),
                                            headers=bearer(a)), range(n)))
    ok = [r for r in rs if r.status_code == 200]
    used = sum(r.json()["usage"]["total_tokens"] for r in ok)
    assert 0 < used <= tpm * 1.05
    assert {r.status_code for r in rs} == {200, 429}
    limited = next(r for r in rs if r.status_code == 429)
    assert limited.json()["error"]["type"] == "tokens"
    assert limited.headers["retry-after"] and "tokens per minute" in limited.json()["error"][
        "message"]
    assert ok[0].headers["x-ratelimit-limit-tokens"] == str(tpm)
    # key b is unaffected by a's burst
    assert c.post(CHAT, json=chat(max_tokens=max_tokens), headers=bearer(b)).status_code == 200


def test_reservation_is_corrected_to_real_usage(secure, keys, fake_engine):
    _, a = keys.create("a", tpm=10_000)
    c = secure()
    fake_engine.queue_text("ok")  # 1 token, though 200 were reserved
    r = c.post(CHAT, json=chat(max_tokens=200), headers=bearer(a))
    used = r.json()["usage"]["total_tokens"]
    r2 = c.get("/v1/usage", headers=bearer(a)).json()
    assert r2["remaining"]["tokens"] == 10_000 - used


def test_request_larger_than_tpm_is_refused_with_a_reason(secure, keys):
    _, a = keys.create("a", tpm=100)
    c = secure()
    err = assert_error(c.post(CHAT, json=chat(max_tokens=200), headers=bearer(a)), 429)
    assert "lower max_tokens" in err["message"]
    # max_tokens omitted: the rest of the context is reserved (256 for the fake engine)
    assert_error(c.post(CHAT, json=chat(), headers=bearer(a)), 429)


# --- usage -------------------------------------------------------------------------------------
def test_usage_endpoint_and_ledger(secure, keys, home):
    _, a = keys.create("usage-key", rpm=100, tpm=100_000)
    c = secure()
    for _ in range(3):
        assert c.post(CHAT, json=chat(max_tokens=4), headers=bearer(a)).status_code == 200
    assert c.post(CHAT, json=chat(temperature=9), headers=bearer(a)).status_code == 400
    u = c.get("/v1/usage", headers=bearer(a)).json()
    assert u["key"] == "usage-key"
    assert u["last_hour"]["requests"] == 4  # this usage request is recorded when it finishes
    assert u["last_hour"]["errors"] == 1
    assert u["last_hour"]["completion_tokens"] == 3  # the fake engine's "ok": one token
    assert u["limits"] == {"requests_per_minute": 100, "tokens_per_minute": 100_000}
    assert u["remaining"]["requests"] == 100 - 5
    assert u["reset"]["requests"].endswith("s")
    from gemmakit.safety.usage import read_summary

    c.app.state.safety.ledger.flush()
    rows = read_summary(home, key_name="usage-key")
    assert sum(r["requests"] for r in rows) == 5
    assert any(r["model"] == MODEL and r["completion_tokens"] == 3 for r in rows)


# --- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("settings,body,param", [
    ({"max_messages": 2}, {"messages": [{"role": "user", "content": "a"}] * 3}, "messages"),
    ({"max_message_chars": 5}, {"messages": [{"role": "user", "content": "a"},
                                             {"role": "assistant", "content": "b"},
                                             {"role": "user", "content": "123456"}]},
     "messages[2].content"),
    ({"max_total_chars": 5}, {"messages": [{"role": "user", "content": "abc"},
                                           {"role": "assistant", "content": "def"},
                                           {"role": "user", "content": "g"}]}, "messages"),
    ({"allowed_roles": ["user", "assistant"]},
     {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
     "messages[0].role"),
    ({"allowed_content_types": ["text"]},
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "x"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     "messages[0].content[1].type"),
    ({"max_image_bytes": 10},
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
         "url": "data:image/png;base64," + base64.b64encode(b"x" * 11).decode()}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"max_audio_bytes": 10},
     {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
         "data": base64.b64encode(b"x" * 11).decode(), "format": "wav"}}]}]},
     "messages[0].content[0].input_audio.data"),
    ({"max_content_parts": 1},
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                {"type": "text", "text": "b"}]}]},
     "messages[0].content"),
])
def test_validation_limits_name_the_param(make_client, fake_engine, settings, body, param):
    c = make_client(fake_engine, model_name=MODEL, **settings)
    assert_error(c.post(CHAT, json={"model": MODEL, **body}), 400, param=param)
    assert fake_engine.requests == []


def test_limits_at_the_boundary_pass(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, max_message_chars=6, max_messages=1)
    assert c.post(CHAT, json=chat("123456")).status_code == 200
    assert_error(c.post("/v1/completions", json={"model": MODEL, "prompt": "1234567"}), 400,
                 param="prompt")
    assert_error(c.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b"]}), 400,
                 param="prompt")


def test_remote_image_urls_are_refused_by_default(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL)
    body = {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data"}}]}]}
    err = assert_error(c.post(CHAT, json=body), 400, param="messages[0].content[0].image_url.url")
    assert "--allow-remote-media" in err["message"]


def test_remote_image_private_address_refused_even_when_allowed(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, allow_remote_media=True)
    body = {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}]}
    err = assert_error(c.post(CHAT, json=body), 400, param="messages[0].content[0].image_url.url")
    assert "private" in err["message"]


def test_oversized_headers_get_431(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, max_header_bytes=2048)
    assert_error(c.get("/v1/models", headers={"x-big": "a" * 4096}), 431)
    assert c.get("/v1/models", headers={"x-small": "a" * 100}).status_code == 200


# --- content policy -----------------------------------------------------------------------------
def policy(*rules):
    return {"rules": list(rules)}


def test_input_block_is_a_400_naming_the_message(make_client, fake_engine, caplog):
    c = make_client(fake_engine, model_name=MODEL, policy=policy(
        {"name": "secret-project", "keywords": ["Project Nightingale"], "action": "block"}))
    with caplog.at_level(logging.INFO):
        r = c.post(CHAT, json={"model": MODEL, "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "tell me about project nightingale please"}]})
    err = assert_error(r, 400, "content_policy_violation", "messages[2].content")
    assert "secret-project" in err["message"] and "nightingale" not in err["message"].lower()
    assert fake_engine.requests == []
    assert "secret-project" in caplog.text and "nightingale" not in caplog.text.lower()


def test_input_mask_replaces_before_the_model_sees_it(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, policy=policy(
        {"name": "email", "detector": "email", "action": "mask", "apply_to": ["input"]}))
    r = c.post(CHAT, json=chat("write to ana.lopez@example.org today"))
    assert r.status_code == 200
    prompt = fake_engine.detokenize(fake_engine.requests[0].prompt_tokens)
    assert "ana.lopez" not in prompt and "write to [EMAIL] today" in prompt
    results = r.json()["prompt_filter_results"][0]["content_filter_results"]
    assert results == {"email": {"filtered": True, "action": "mask", "count": 1}}


def test_token_id_prompts_refused_when_input_is_policed(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, policy=policy(
        {"name": "kw", "keywords": ["x"], "action": "block", "apply_to": ["input"]}))
    assert_error(c.post("/v1/completions", json={"model": MODEL, "prompt": [1, 2, 3]}), 400,
                 param="prompt")


SPLIT = ("Mail jo", "hn.d", "oe@exa", "mple.com or 4111 1111", " 1111 1111", " thanks")
MASKED = "Mail [EMAIL] or [CARD] thanks"
RULES = policy({"name": "email", "detector": "email", "action": "mask"},
               {"name": "card", "detector": "payment_card", "action": "mask"})


def test_output_mask_across_chunk_boundaries(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, policy=RULES)
    fake_engine.queue_text(*SPLIT)
    r = c.post(CHAT, json=chat())
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == MASKED
    assert choice["content_filter_results"]["email"]["action"] == "mask"
    assert choice["content_filter_results"]["card"]["count"] == 1
    assert r.json()["usage"]["completion_tokens"] == len(SPLIT)


def test_output_mask_across_chunk_boundaries_streamed(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, policy=RULES)
    fake_engine.queue_text(*SPLIT)
    r = c.post(CHAT, json=chat(stream=True))
    events = [json.loads(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    deltas = [e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]]
    assert "".join(deltas) == MASKED
    assert not any("@" in d or "4111" in d or "oe" in d for d in deltas)
    assert any("content_filter_results" in e["choices"][0] for e in events if e["choices"])
    # plain text is not held back longer than needed: "Mail " goes out before the address ends
    assert deltas[1].startswith("Mail")


def test_output_mask_on_completions_stream(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, policy=RULES)
    fake_engine.queue_text(*SPLIT)
    r = c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True})
    events = [json.loads(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == MASKED


def test_output_block_ends_with_content_filter(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, policy=policy(
        {"name": "launch-codes", "pattern": r"code \d{4}", "action": "block",
         "apply_to": ["output"]}))
    fake_engine.queue_text("The launch ", "code 12", "34 is secret", " and more")
    r = c.post(CHAT, json=chat())
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"] == "The launch "
    assert choice["content_filter_results"]["launch-codes"]["action"] == "block"


def test_flag_logs_the_rule_name_only(make_client, fake_engine, caplog):
    c = make_client(fake_engine, model_name=MODEL, policy=policy(
        {"name": "pii-phone", "detector": "phone", "action": "flag"}))
    fake_engine.queue_text("Call +1 415-555-", "2671 today")
    with caplog.at_level(logging.INFO):
        r = c.post(CHAT, json=chat())
    assert r.json()["choices"][0]["message"]["content"] == "Call +1 415-555-2671 today"
    assert "pii-phone" in caplog.text and "2671" not in caplog.text


def test_logprobs_refused_when_output_is_masked(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, policy=RULES)
    assert_error(c.post(CHAT, json=chat(logprobs=True)), 400, param="logprobs")


def test_bad_policy_config_fails_at_start(make_client):
    from gemmakit.errors import ConfigError

    with pytest.raises(ConfigError):
        make_client(model_name=MODEL, policy=policy({"name": "x", "action": "mask"}))
    with pytest.raises(ConfigError):
        make_client(model_name=MODEL, policy=policy({"name": "x", "detector": "nope"}))


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_rate_limit_store_is_a_503_not_a_500(secure, keys, fake_engine):
    """Redis down: a limited key's request cannot be checked, so it is refused with a 503 and
    Retry-After, before the engine sees it; an unlimited key is not affected."""
    _, limited = keys.create("limited", rpm=10, tpm=10_000)
    _, free = keys.create("free")
    c = secure(ratelimit_store=f"redis://127.0.0.1:{_closed_port()}/0")
    r = c.post(CHAT, json=chat(), headers=bearer(limited))
    err = assert_error(r, 503, code="ratelimit_store_unavailable")
    assert r.headers["retry-after"] == "1" and "rate-limit store" in err["message"]
    assert fake_engine.requests == []
    assert c.post(CHAT, json=chat(), headers=bearer(free)).status_code == 200


def test_a_stalled_rate_limit_store_times_out_as_a_503(secure, keys):
    """Redis accepting connections but never answering (SIGSTOPped): a 503 within seconds."""
    import socket
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
    _, limited = keys.create("limited", tpm=10_000)
    c = secure(ratelimit_store=f"redis://127.0.0.1:{server.getsockname()[1]}/0")
    t0 = time.perf_counter()
    r = c.post(CHAT, json=chat(), headers=bearer(limited))
    assert_error(r, 503, code="ratelimit_store_unavailable")
    assert time.perf_counter() - t0 < 10
    server.close()
