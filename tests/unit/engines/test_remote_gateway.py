"""The remote engine behind the real gemmakit app, in front of real HTTP upstreams on loopback:
fault-injecting ones (tests/fault_upstream.py) and gemmakit apps served by the FakeEngine. The
gateway tokenizes with the FakeEngine's vocabulary (one id per character), so prompts and replies
can be checked token by token. Time limits are generous except in the tests about them (TIGHT:
a second or less), so the file runs in seconds on a quiet machine and holds on a loaded one."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest

from gemmakit.engines.remote import RemoteEngine
from gemmakit.engines.remote.breaker import CircuitBreaker
from gemmakit.engines.remote.upstreams import Upstream
from gemmakit.server.app import create_app
from gemmakit.types import Capabilities, Chunk, ChunkStats
from tests.conftest import CHAR_BASE, FakeEngine, uvicorn_thread
from tests.fault_upstream import Fault, FaultUpstream

pytestmark = pytest.mark.timeout(120)


class FakeVocab:
    """The FakeEngine's vocabulary, as the gateway's local tokenizer."""

    n_vocab = CHAR_BASE + 0x110000
    eog_ids = frozenset({1, 106})

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return FakeEngine().tokenize(text, special=special)

    def piece(self, token: int) -> bytes:
        return FakeEngine.detokenize([token]).encode() if token >= CHAR_BASE else b""


TIGHT = {"connect_timeout": 0.5, "first_byte_timeout": 1.0, "idle_timeout": 0.6}


def gateway_engine(urls: Sequence[str], *, keys: Sequence[str | None] | None = None,
                   failures: int = 2, cooldown: float = 0.5, **kw: Any) -> RemoteEngine:
    ups = [Upstream(u, (keys or [None] * len(urls))[i],
                    breaker=CircuitBreaker(failures=failures, cooldown=cooldown))
           for i, u in enumerate(urls)]
    # Generous time limits unless a test is about them (TIGHT): a loaded CI machine must not
    # turn a slow first byte into a failure the test did not ask for.
    opts: dict[str, Any] = {"connect_timeout": 2.0, "first_byte_timeout": 10.0,
                            "idle_timeout": 10.0, "retries": 2, "health_interval": 0.2}
    opts.update(kw)
    return RemoteEngine(ups, FakeVocab(), **opts)


@contextlib.contextmanager
def serving(*apps: Any) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(uvicorn_thread(a)) for a in apps]


@contextlib.contextmanager
def faults(n: int) -> Iterator[tuple[list[FaultUpstream], list[str]]]:
    ups = [FaultUpstream(f"f{i}") for i in range(n)]
    with serving(*(u.app() for u in ups)) as urls:
        yield ups, urls


@contextlib.contextmanager
def gateway(engine_factory: Callable[[], RemoteEngine]) -> Iterator[httpx.Client]:
    holder: dict[str, RemoteEngine] = {}

    def load() -> RemoteEngine:
        holder["engine"] = engine_factory()
        return holder["engine"]

    app = create_app("gemma-test", load)
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=20) as client:
        client.engine = holder["engine"]  # type: ignore[attr-defined]
        yield client


def chat(client: httpx.Client, **kw: Any) -> httpx.Response:
    body = {"model": "gemma-test", "messages": [{"role": "user", "content": "hi"}], **kw}
    return client.post("/v1/chat/completions", json=body)


def stream_events(client: httpx.Client, **kw: Any) -> list[Any]:
    body = {"model": "gemma-test", "messages": [{"role": "user", "content": "hi"}],
            "stream": True, **kw}
    out = []
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def metric(client: httpx.Client, name: str, **labels: str) -> float | None:
    text = client.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    assert want is not None
    return None


def test_tokens_out_text_back_usage_and_keys() -> None:
    with faults(1) as (ups, urls), gateway(lambda: gateway_engine(urls, keys=["sk-up"])) as c:
        r = chat(c, max_tokens=50, temperature=0.3, top_k=5, seed=7, stop=["zz"])
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["choices"][0]["message"]["content"] == "hello"
        body = ups[0].bodies[-1]
        # the Gemma prompt was rendered and tokenized by the gateway: ids go upstream
        sent = FakeEngine.detokenize(body["prompt"])
        assert sent.startswith("<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model")
        assert out["usage"]["prompt_tokens"] == len(body["prompt"])
        assert out["usage"]["completion_tokens"] == 5
        assert body["stream"] is True and body["return_token_ids"] is True
        assert (body["max_tokens"], body["temperature"], body["top_k"], body["seed"],
                body["stop"], body["model"]) == (50, 0.3, 5, 7, ["zz"], "f0")
        # the upstream's key on requests and on health checks
        assert ups[0].completion_headers[-1]["authorization"] == "Bearer sk-up"
        keyed = [h for h in ups[0].headers if h.get("authorization") == "Bearer sk-up"]
        assert len(keyed) >= 2  # the start-up probe (/v1/models) and the health checks
        h = c.get("/health").json()
        assert h["engine"] == "remote" and h["upstreams"][0]["healthy"] is True
        assert h["upstreams"][0]["kind"] == "gemmakit"
        assert metric(c, "gemmakit_upstream_requests_total", status="200") == 1
        assert metric(c, "gemmakit_upstream_healthy") == 1
        assert metric(c, "gemmakit_upstream_inflight") == 0
        assert metric(c, "gemmakit_upstream_latency_seconds_count") == 1
        assert metric(c, "gemmakit_requests_total", status="200") == 1


def test_stop_strings_and_max_tokens_are_the_gateways() -> None:
    with faults(1) as (ups, urls), gateway(lambda: gateway_engine(urls)) as c:
        r = chat(c, stop=["ll"])
        assert r.json()["choices"][0]["message"]["content"] == "he"
        assert r.json()["choices"][0]["finish_reason"] == "stop"
        r = chat(c, max_tokens=3)
        assert r.json()["choices"][0]["message"]["content"] == "hel"
        assert r.json()["choices"][0]["finish_reason"] == "length"
        assert r.json()["usage"]["completion_tokens"] == 3


def test_429_and_500_retry_on_a_different_upstream() -> None:
    with faults(3) as (ups, urls), gateway(lambda: gateway_engine(urls, failures=5)) as c:
        for u in ups:
            u.queue.append(Fault("429"))
        ups_before = [len(u.bodies) for u in ups]
        r = chat(c)
        # one 429, then another upstream: 429 again, then the third: 429 -> out of retries
        assert r.status_code == 429, r.text
        assert [len(u.bodies) - b for u, b in zip(ups, ups_before)] == [1, 1, 1]
        for u in ups:
            u.queue.clear()
        ups[0].queue.append(Fault("500"))
        ups[1].queue.append(Fault("500"))
        ups[2].queue.append(Fault("500"))
        ups[0].queue.append(Fault("ok"))  # whichever is tried after the 500s
        r = chat(c)
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
        for u in ups:
            u.queue.clear()
        ups[0].queue.append(Fault("500"))
        ups[1].queue.append(Fault("500"))
        r = chat(c)
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "hello"
        assert metric(c, "gemmakit_upstream_requests_total", upstream=_name(urls[0]),
                      status="500") is not None


def _name(url: str) -> str:
    return url.split("//", 1)[1]


def test_no_first_byte_is_retried_elsewhere_within_the_first_byte_timeout() -> None:
    with faults(2) as (ups, urls), gateway(lambda: gateway_engine(urls, **TIGHT)) as c:
        # a stall longer than the bound below, no longer: the fault server holds it to the end
        ups[0].default = Fault("stall", stall_s=10)
        t = time.monotonic()
        for _ in range(3):
            r = chat(c)
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"] == "hello"
        # at most one first-byte timeout each (1 s), never the stall's 10 s
        assert time.monotonic() - t < 6
        status = metric(c, "gemmakit_upstream_requests_total", upstream=_name(urls[0]),
                        status="timeout")
        assert status is None or status >= 1


def test_a_stall_mid_stream_ends_with_an_error_event_and_done() -> None:
    with faults(2) as (ups, urls), gateway(lambda: gateway_engine(urls, **TIGHT)) as c:
        for u in ups:
            u.default = Fault("stall_mid", after=2, stall_s=30)
        t = time.monotonic()
        events = stream_events(c)
        assert time.monotonic() - t < 5  # the idle timeout (0.6 s), not the stall
        assert events[-1] == "[DONE]"
        err = events[-2]["error"]
        assert err["code"] == "upstream_timeout" and "stalled mid-stream" in err["message"]
        text = "".join(e["choices"][0]["delta"].get("content") or ""
                       for e in events[:-2] if isinstance(e, dict) and e.get("choices"))
        assert text == "he"  # what was streamed before the stall; never a finish_reason
        assert not any(e["choices"][0].get("finish_reason") for e in events[:-2]
                       if isinstance(e, dict) and e.get("choices"))
        # no retry after bytes reached the client: one upstream tried
        assert sum(len(u.bodies) for u in ups) == 1


def test_a_stream_cut_halfway_is_an_error_not_a_truncated_success() -> None:
    with faults(1) as (ups, urls), gateway(lambda: gateway_engine(urls)) as c:
        ups[0].default = Fault("cut", after=3)
        events = stream_events(c)
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "upstream_error"
        r = chat(c)  # not streamed: the whole answer or an error status
        assert r.status_code == 502
        ups[0].default = Fault("error_event", after=1)
        events = stream_events(c)
        assert events[-2]["error"]["code"] == "upstream_error"
        assert "injected failure" in events[-2]["error"]["message"]


def test_an_upstream_is_ejected_then_readmitted_and_visible() -> None:
    # The cooldown outlasts the eleven requests below even on a loaded machine (they take
    # milliseconds each): ejected means open for all of them, not closed again by a health check.
    cooldown = 4.0
    with faults(2) as (ups, urls), gateway(lambda: gateway_engine(
            urls, failures=2, cooldown=cooldown, retries=1)) as c:
        ups[0].default = Fault("500")
        for _ in range(6):
            assert chat(c).status_code == 200  # 500s are retried on the other one
        h = c.get("/health").json()
        first = next(u for u in h["upstreams"] if u["name"] == _name(urls[0]))
        assert first["state"] in ("open", "half_open") and first["healthy"] is False
        assert first["ejections"] >= 1
        assert metric(c, "gemmakit_upstream_healthy", upstream=_name(urls[0])) == 0
        n0 = len(ups[0].bodies)
        for _ in range(5):
            assert chat(c).status_code == 200
        assert len(ups[0].bodies) == n0  # never routed to while ejected and the other healthy
        ups[0].default = Fault("ok")
        # the rest of the cooldown, then a passing health check closes it
        deadline = time.monotonic() + cooldown + 5
        while metric(c, "gemmakit_upstream_healthy", upstream=_name(urls[0])) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for _ in range(8):
            chat(c)
        assert len(ups[0].bodies) > n0


def test_all_upstreams_down_is_a_503_at_once() -> None:
    with faults(1) as (ups, urls):
        dead = "http://127.0.0.1:9"  # nothing listens on the discard port
        with gateway(lambda: gateway_engine([urls[0], dead], failures=1)) as c:
            assert chat(c).status_code == 200
            h = c.get("/health").json()
            assert [u["state"] for u in h["upstreams"]][1] == "unknown"
            ups[0].health_status = 500
            deadline = time.monotonic() + 5
            while c.get("/health").status_code != 503:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            t = time.monotonic()
            r = chat(c)
            assert r.status_code == 503 and "Retry-After" in r.headers
            assert time.monotonic() - t < 1
            # streamed too: the status code, not a 200 and an error event
            r = chat(c, stream=True)
            assert r.status_code == 503 and "Retry-After" in r.headers
            # scoring is refused before the stream starts, with its param
            r = c.post("/v1/completions", json={"model": "gemma-test", "prompt": "x",
                                                "echo": True, "logprobs": 1, "max_tokens": 1,
                                                "stream": True})
            assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs", r.text


def test_a_client_that_goes_away_cancels_the_upstream_request() -> None:
    with faults(1) as (ups, urls), gateway(lambda: gateway_engine(urls, idle_timeout=5)) as c:
        ups[0].default = Fault("ok", tokens=2000, delay_s=0.02)
        body = {"model": "gemma-test", "messages": [{"role": "user", "content": "hi"}],
                "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if "content" in line:
                    break
        t0 = time.monotonic()
        deadline = t0 + 15  # the upstream would need 40 s to finish
        while ups[0].cancelled < 1:
            assert time.monotonic() < deadline, (
                "the upstream kept generating; gateway in flight: "
                f"{metric(c, 'gemmakit_upstream_inflight')}, requests: "
                f"{metric(c, 'gemmakit_requests_running')}")
            time.sleep(0.05)
        assert ups[0].finished == 0
        print(f"upstream cancelled {time.monotonic() - t0:.2f} s after the client left")
        while metric(c, "gemmakit_upstream_requests_total", status="cancelled") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert metric(c, "gemmakit_upstream_inflight") == 0


def _fake_upstream_app(engine: FakeEngine) -> Any:
    return create_app("up", lambda: engine)


def _spell(text: str) -> list[Chunk | BaseException]:
    chunks: list[Chunk | BaseException] = [Chunk(text=ch, token_ids=[CHAR_BASE + ord(ch)])
                                           for ch in text]
    chunks.append(Chunk(finish_reason="stop", stats=ChunkStats(completion_tokens=len(text))))
    return chunks


def test_gemmakit_upstreams_routing_policies() -> None:
    engines = [FakeEngine(context_length=400) for _ in range(3)]
    for e in engines:
        e.default_reply = _spell("ok")
    with serving(*(_fake_upstream_app(e) for e in engines)) as urls:
        # weighted round robin by weights 2:1:1
        def weighted() -> RemoteEngine:
            eng = gateway_engine(urls, routing="weighted")
            for u, w in zip(eng.pool.upstreams, (2.0, 1.0, 1.0)):
                u.weight = w
            return eng

        with gateway(weighted) as c:
            for k in range(8):
                r = chat(c, messages=[{"role": "user", "content": f"n{k}"}])
                assert r.json()["choices"][0]["message"]["content"] == "ok"
            assert [len(e.requests) for e in engines] == [4, 2, 2]
            # the upstream's context (its /v1/models card) bounds the gateway's
            assert c.engine.context_length == 400  # type: ignore[attr-defined]
        for e in engines:
            e.requests.clear()
        # prefix affinity: each conversation's turns stay on one upstream
        with gateway(lambda: gateway_engine(urls, routing="prefix", prefix_tokens=24)) as c:
            placed = []
            for conv in range(6):
                first = [{"role": "user", "content": f"conversation {conv} begins"}]
                before = [len(e.requests) for e in engines]
                for turn in range(3):
                    msgs = first + [{"role": "assistant", "content": "ok"},
                                    {"role": "user", "content": f"turn {turn}"}] * turn
                    assert chat(c, messages=msgs).status_code == 200
                grew = [len(e.requests) - b for e, b in zip(engines, before)]
                assert sorted(grew) == [0, 0, 3]  # all three turns on one upstream
                placed.append(grew.index(3))
            # They share their first tokens (the turn markup, "conversation "): that prefix's
            # upstream takes them all while its load stays within --prefix-imbalance (these
            # requests come one at a time: it always does)
            assert len(set(placed)) == 1


def test_constraints_go_upstream_as_grammar_and_gemmakit_validates_them() -> None:
    constrained = FakeEngine(context_length=2048, capabilities=Capabilities(constraints=True))
    constrained.default_reply = _spell('{"name": "get_weather", "arguments": {"city": "Oslo"}}')
    plain = FakeEngine()
    with serving(_fake_upstream_app(constrained), _fake_upstream_app(plain)) as urls:
        with httpx.Client(base_url=urls[1]) as up:
            # gemmakit's /v1/completions grammar extension: only where the engine constrains
            r = up.post("/v1/completions", json={"model": "up", "prompt": "x",
                                                 "grammar": 'root ::= "a"'})
            assert r.status_code == 400 and r.json()["error"]["param"] == "grammar"
        with httpx.Client(base_url=urls[0]) as up:
            r = up.post("/v1/completions", json={"model": "up", "prompt": "x",
                                                 "grammar": "root ::= ("})
            assert r.status_code == 400 and r.json()["error"]["param"] == "grammar"
            r = up.post("/v1/completions", json={"model": "up", "prompt": "x",
                                                 "grammar": "root ::= \"a\"" + " " * 300_000})
            assert r.status_code == 400 and "limit" in r.json()["error"]["message"]
            r = up.post("/v1/completions", json={"model": "up", "prompt": [5, 6],
                                                 "grammar": 'root ::= "a"',
                                                 "return_token_ids": True})
            assert r.status_code == 200, r.text
            assert constrained.requests[-1].constraint.value == 'root ::= "a"'
            assert r.json()["choices"][0]["token_ids"] == [CHAR_BASE + ord(ch) for ch in
                                                           '{"name": "get_weather", "arguments"'
                                                           ': {"city": "Oslo"}}']
        with gateway(lambda: gateway_engine([urls[0]])) as c:
            tools = [{"type": "function", "function": {
                "name": "get_weather", "parameters": {
                    "type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"]}}}]
            r = chat(c, tools=tools, tool_choice={"type": "function",
                                                  "function": {"name": "get_weather"}},
                     max_tokens=120)
            assert r.status_code == 200, r.text
            call = r.json()["choices"][0]["message"]["tool_calls"][0]["function"]
            assert call["name"] == "get_weather"
            assert json.loads(call["arguments"]) == {"city": "Oslo"}
            grammar = constrained.requests[-1].constraint
            assert grammar is not None and grammar.kind == "grammar" and "root" in grammar.value
            # the prompt the upstream got declares the tool: rendered by the gateway
            assert "get_weather" in FakeEngine.detokenize(constrained.requests[-1].prompt_tokens)
