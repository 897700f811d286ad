"""The route contract: every generation route registered on the app goes through the request
pipeline, so each one validates its text, applies the content policy, books exactly the tokens its
response reports (usage ledger and metrics alike) and cancels its generation when the client goes
away. The routes are enumerated from the app itself: a POST /v1 route added later without the
pipeline (or without a case here) fails this file."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gemmakit.safety.store import connect
from gemmakit.server.app import create_app
from gemmakit.server.routes.adapters import ADMIN_ROUTE
from gemmakit.server.routes.common import PIPELINE_ROUTE
from gemmakit.settings import Settings
from gemmakit.types import Capabilities, Chunk, ChunkStats
from tests.conftest import CHAR_BASE, FakeEngine, uvicorn_thread
from tests.unit.monitoring.helpers import value

MODEL = "gemma-test"
POLICY = {"rules": [{"name": "bird", "keywords": ["Bluebird"], "action": "block",
                     "apply_to": ["input"]}]}
SURROGATE = "a \ud800 b"  # valid JSON ("\\ud800"), not encodable as UTF-8


@dataclass(frozen=True)
class Case:
    """How to send a request to one route with `text` where the user's words go."""

    build: Callable[[str, bool], dict[str, Any]]
    """(text, stream) -> httpx request keyword arguments."""
    text_param: str
    """The request parameter `text` lands in (errors about it name it)."""
    usage: Callable[[dict[str, Any]], tuple[int, int]]
    """(prompt tokens, completion tokens) from a non-streamed response."""
    streams: bool = True
    encodable_only: bool = False
    """Multipart form fields arrive decoded by the framework (invalid bytes replaced): such a
    route cannot receive a lone surrogate, so its validation case is another bad field."""
    invalid: tuple[dict[str, Any], str] | None = None
    stream_usage: Callable[[dict[str, Any]], tuple[int, int]] | None = None
    """(prompt tokens, completion tokens) from the streamed event that carries the usage
    (default: the event's own `usage`, as `usage` reads a response)."""
    done_marker: bool = True
    """Whether a stream ends with `data: [DONE]` (the Responses API's ends with its last
    event)."""


def _json(body: dict[str, Any]) -> dict[str, Any]:
    # Escaped as JSON allows ("\\ud800"): the text a client library would send for such a str.
    return {"content": json.dumps(body), "headers": {"content-type": "application/json"}}


def _openai_usage(r: dict[str, Any]) -> tuple[int, int]:
    return r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]


def _audio(text: str, stream: bool) -> dict[str, Any]:
    return {"data": {"model": MODEL, "prompt": text},
            "files": {"file": ("clip.wav", b"RIFF-not-decoded-by-the-fake-engine", "audio/wav")}}


def _audio_usage(r: dict[str, Any]) -> tuple[int, int]:
    return r["usage"]["input_tokens"], r["usage"]["output_tokens"]


def _responses_usage(r: dict[str, Any]) -> tuple[int, int]:
    return r["usage"]["input_tokens"], r["usage"]["output_tokens"]


CASES: dict[str, Case] = {
    "/v1/chat/completions": Case(
        lambda text, stream: _json({"model": MODEL, "stream": stream,
                                    "stream_options": {"include_usage": True} if stream
                                    else None,
                                    "messages": [{"role": "user", "content": text}]}),
        "messages[0].content", _openai_usage),
    "/v1/completions": Case(
        lambda text, stream: _json({"model": MODEL, "prompt": text, "stream": stream,
                                    "stream_options": {"include_usage": True} if stream
                                    else None}),
        "prompt", _openai_usage),
    "/v1/responses": Case(
        lambda text, stream: _json({"model": MODEL, "input": text, "stream": stream}),
        "input", _responses_usage, stream_usage=lambda ev: _responses_usage(ev["response"]),
        done_marker=False),
    "/v1/audio/transcriptions": Case(
        _audio, "prompt", _audio_usage, streams=False, encodable_only=True,
        invalid=({"data": {"model": MODEL, "language": "English"},
                  "files": {"file": ("clip.wav", b"RIFF", "audio/wav")}}, "language")),
    "/v1/audio/translations": Case(
        _audio, "prompt", _audio_usage, streams=False, encodable_only=True,
        invalid=({"data": {"model": MODEL},
                  "files": {"file": ("clip.wav", b"", "audio/wav")}}, "file")),
}


def _app(home: Any, engine: FakeEngine, **settings: Any) -> Any:
    return create_app(MODEL, lambda: engine, Settings.load(home=home, policy=POLICY,
                                                            **settings))


def _post_v1_paths(app: Any) -> set[str]:
    return {p for p, ops in app.openapi()["paths"].items()
            if p.startswith("/v1/") and "post" in ops}


def _engine() -> FakeEngine:
    return FakeEngine(context_length=4096, capabilities=Capabilities(audio=True, vision=True))


def test_every_post_v1_route_goes_through_the_pipeline_and_has_a_case(tmp_path):
    app = _app(tmp_path, _engine())
    posts = _post_v1_paths(app)
    marked = {p for p, ops in app.openapi()["paths"].items()
              if any(op.get(PIPELINE_ROUTE) for op in ops.values())}
    # Administrative routes (no generation) are marked as such, and are not pipeline routes.
    admin = {p for p, ops in app.openapi()["paths"].items()
             if any(op.get(ADMIN_ROUTE) for op in ops.values())}
    assert admin == {"/v1/adapters/load", "/v1/adapters/unload"}
    posts -= admin
    assert posts, "the app registers no POST /v1 route"
    assert posts == marked, f"POST /v1 routes outside the pipeline: {sorted(posts - marked)}"
    assert posts == set(CASES), (f"routes without a contract case: {sorted(posts - set(CASES))}; "
                                 f"cases for routes that are gone: {sorted(set(CASES) - posts)}")


ROUTES = sorted(CASES)


@pytest.fixture
def served(tmp_path):
    """(base URL, engine, home): the real app over the fake engine, on uvicorn over loopback."""
    engine = _engine()
    home = tmp_path / "home"
    with uvicorn_thread(_app(home, engine)) as base_url:
        yield base_url, engine, home


def _metrics(base_url: str) -> str:
    return httpx.get(f"{base_url}/metrics").text


def _ledger_row(home: Any, request_id: str) -> Any:
    conn = connect(home)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the ledger writes from a background thread
            row = conn.execute("SELECT * FROM usage WHERE request_id = ?", (request_id,)
                               ).fetchone()
            if row is not None:
                return row
            time.sleep(0.02)
    finally:
        conn.close()
    raise AssertionError(f"no ledger row for {request_id}")


@pytest.mark.parametrize("path", ROUTES)
def test_validation(served, path):
    base_url, engine, _ = served
    case = CASES[path]
    if case.encodable_only:
        assert case.invalid is not None
        kwargs, param = case.invalid
    else:
        kwargs, param = case.build(SURROGATE, False), case.text_param
    r = httpx.post(f"{base_url}{path}", **kwargs)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert engine.requests == []  # refused before anything reached the engine
    text = _metrics(base_url)
    assert value(text, "gemmakit_requests_total", model=MODEL, status="400") == 1


@pytest.mark.parametrize("path", ROUTES)
def test_content_policy(served, path):
    base_url, engine, home = served
    case = CASES[path]
    r = httpx.post(f"{base_url}{path}", **case.build("say hello to Bluebird", False))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "content_policy_violation" and err["param"] == case.text_param
    assert engine.requests == []
    row = _ledger_row(home, r.headers["x-request-id"])
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == (400, 0, 0)


@pytest.mark.parametrize("path", ROUTES)
def test_token_accounting_and_metrics(served, path):
    base_url, engine, home = served
    case = CASES[path]
    engine.queue_text("Hi", " there", ".")
    r = httpx.post(f"{base_url}{path}", **case.build("hello", False))
    assert r.status_code == 200, r.text
    prompt, completion = case.usage(r.json())
    assert prompt > 0 and completion == 3
    rows = [(r.headers["x-request-id"], prompt, completion)]
    if case.streams:
        engine.queue_text("a", "b")
        s = httpx.post(f"{base_url}{path}", **case.build("hello again", True))
        events = [line[5:].strip() for line in s.text.splitlines() if line.startswith("data:")]
        if case.done_marker:
            assert events.pop() == "[DONE]"
        usage = [e for e in events if '"usage":{' in e.replace(" ", "")]
        assert len(usage) == 1
        sp, sc = (case.stream_usage or case.usage)(json.loads(usage[0]))
        rows.append((s.headers["x-request-id"], sp, sc))
        assert sc == 2
    text = _metrics(base_url)
    lab = {"model": MODEL}
    assert value(text, "gemmakit_prompt_tokens_total", **lab) == sum(p for _, p, _ in rows)
    assert value(text, "gemmakit_generation_tokens_total", **lab) == sum(c for _, _, c in rows)
    assert value(text, "gemmakit_requests_total", model=MODEL, status="200") == len(rows)
    assert value(text, "gemmakit_e2e_request_latency_seconds_count", model=MODEL,
                 status="200") == len(rows)
    for rid, p, c in rows:
        row = _ledger_row(home, rid)
        assert (row["path"], row["status"], row["prompt_tokens"], row["completion_tokens"]) == \
            (path, 200, p, c)


def _slow_reply(engine: FakeEngine, n: int = 400) -> None:
    engine.delay_s = 0.01
    engine.queue_chunks([*(Chunk(text="x", token_ids=[CHAR_BASE]) for _ in range(n)),
                         Chunk(finish_reason="stop", stats=ChunkStats(completion_tokens=n))])


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_cancels_the_generation(served, path, stream):
    base_url, engine, home = served
    case = CASES[path]
    if stream and not case.streams:
        pytest.skip("this route does not stream")
    _slow_reply(engine)
    with httpx.Client(timeout=httpx.Timeout(5.0, read=0.5)) as client:
        if stream:  # read until generated text arrives, then hang up
            with client.stream("POST", f"{base_url}{path}", **case.build("hello", True)) as r:
                assert r.status_code == 200
                next(line for line in r.iter_lines() if '"x"' in line)
        else:  # give up waiting for the whole answer
            with pytest.raises(httpx.ReadTimeout):
                client.post(f"{base_url}{path}", **case.build("hello", False))
    deadline = time.monotonic() + 5
    while not engine.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(engine.cancelled) == 1, "the generation kept running for nobody"
    assert len(engine.requests) == 1
    rid = engine.requests[0].request_id.rsplit("-", 1)[0]  # choice ids are "<request id>-<k>"
    row = _ledger_row(home, rid)
    assert row["status"] == 499 and 0 < row["completion_tokens"] < 400
    text = _metrics(base_url)
    assert value(text, "gemmakit_requests_total", model=MODEL, status="499") == 1
    assert value(text, "gemmakit_generation_tokens_total", model=MODEL) == \
        row["completion_tokens"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_text_that_cannot_be_encoded_is_never_a_500(served, path):
    """Anywhere in a JSON body: the model name (quoted back in the 404), a stop sequence, a
    message's name, a tool's description."""
    base_url, engine, _ = served
    body = json.loads(CASES[path].build("hello", False)["content"])

    def post(doc: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{base_url}{path}", content=json.dumps(doc),
                          headers={"content-type": "application/json"})

    r = post({**body, "model": SURROGATE})
    assert r.status_code == 404 and "\\ud800" in r.json()["error"]["message"]
    r = post({**body, "stop": ["ok", SURROGATE]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop[1]"
    if path == "/v1/chat/completions":
        r = post({**body, "messages": [{"role": "user", "content": "hi", "name": SURROGATE}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].name"
        r = post({**body, "tools": [{"type": "function", "function": {
            "name": "f", "description": SURROGATE}}]})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "tools[0].function.description"
    assert engine.requests == []
