"""/metrics after a known sequence of requests: every counter and histogram count is exact, and
the token counters equal the sums of the responses' usage."""

from __future__ import annotations

from gemmakit.errors import EngineError, ServiceUnavailableError
from gemmakit.types import Chunk, ChunkStats, EngineHealth
from tests.conftest import CHAR_BASE, FakeEngine
from tests.unit.monitoring.helpers import samples, sse_usage, value

M = "gemma-test"
CHAT = {"model": M, "messages": [{"role": "user", "content": "hello there"}]}


class BusyEngine(FakeEngine):
    def health(self) -> EngineHealth:
        return EngineHealth(ok=True, requests_running=3, requests_waiting=2,
                            kv_cache_usage_ratio=0.25)


def test_counters_equal_usage_after_a_known_sequence(make_client):
    engine = BusyEngine()
    c = make_client(engine)
    usages = []

    # 1. plain chat
    engine.queue_text("Hi", " you")
    r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    usages.append(r.json()["usage"])
    # 2. n = 2: the prompt counts once, both choices' tokens count
    engine.queue_text("a", "b", "c")
    engine.queue_text("d")
    r = c.post("/v1/chat/completions", json={**CHAT, "n": 2})
    usages.append(r.json()["usage"])
    assert usages[-1]["completion_tokens"] == 4
    # 3. streamed chat, n = 2, include_usage
    engine.queue_text("x", "y")
    engine.queue_text("z")
    r = c.post("/v1/chat/completions", json={**CHAT, "n": 2, "stream": True,
                                             "stream_options": {"include_usage": True}})
    usages.append(sse_usage(r.text))
    # 4. completions with two prompts
    engine.queue_text("1")
    engine.queue_text("2", "3")
    r = c.post("/v1/completions", json={"model": M, "prompt": ["abc", "defgh"]})
    usages.append(r.json()["usage"])
    # 5. engine stats on the final chunk feed the per-sequence histograms
    engine.queue_chunks([
        Chunk(text="p", token_ids=[CHAR_BASE]), Chunk(text="q", token_ids=[CHAR_BASE]),
        Chunk(finish_reason="stop", stats=ChunkStats(
            prompt_tokens=5, completion_tokens=2, time_to_first_token_s=0.25,
            decode_tokens_per_s=20.0, queue_time_s=0.125))])
    r = c.post("/v1/completions", json={"model": M, "prompt": "hello", "stream": True,
                                        "stream_options": {"include_usage": True}})
    usages.append(sse_usage(r.text))
    # failures: invalid value (400), unknown model (404), refused by the engine (503), engine
    # failure before any token (500), and a stream that fails after two tokens (500)
    assert c.post("/v1/chat/completions", json={**CHAT, "temperature": 7}).status_code == 400
    assert c.post("/v1/chat/completions", json={**CHAT, "model": "other"}).status_code == 404
    engine.queue_error(ServiceUnavailableError("the server is at capacity"))
    assert c.post("/v1/chat/completions", json=CHAT).status_code == 503
    engine.queue_error(EngineError("boom"))
    assert c.post("/v1/chat/completions", json=CHAT).status_code == 500
    engine.queue_error(EngineError("boom"), after=["u", "v"])
    r = c.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200 and '"error"' in r.text
    failed_prompt = len(engine.requests[-1].prompt_tokens)
    # not generation requests: never counted
    c.get("/v1/models")
    c.get("/health")

    text = c.get("/metrics").text
    lab = {"model": M}
    assert value(text, "gemmakit_prompt_tokens_total", **lab) == \
        sum(u["prompt_tokens"] for u in usages) + failed_prompt
    assert value(text, "gemmakit_generation_tokens_total", **lab) == \
        sum(u["completion_tokens"] for u in usages) + 2
    for status, n in {"200": 5, "400": 1, "404": 1, "503": 1, "500": 2}.items():
        assert value(text, "gemmakit_requests_total", model=M, status=status) == n, status
        assert value(text, "gemmakit_e2e_request_latency_seconds_count", model=M,
                     status=status) == n
    assert sum(v for (name, _), v in samples(text).items()
               if name == "gemmakit_requests_total") == 10
    # per-request token histograms: the six requests whose prompt reached the engine
    assert value(text, "gemmakit_request_prompt_tokens_count", **lab) == 6
    assert value(text, "gemmakit_request_prompt_tokens_sum", **lab) == \
        value(text, "gemmakit_prompt_tokens_total", **lab)
    assert value(text, "gemmakit_request_generation_tokens_sum", **lab) == \
        value(text, "gemmakit_generation_tokens_total", **lab)
    # per-sequence histograms: only the sequence whose stats had timings
    assert value(text, "gemmakit_time_to_first_token_seconds_count", **lab) == 1
    assert value(text, "gemmakit_time_to_first_token_seconds_sum", **lab) == 0.25
    assert value(text, "gemmakit_time_per_output_token_seconds_sum", **lab) == 0.05
    assert value(text, "gemmakit_request_queue_time_seconds_sum", **lab) == 0.125
    assert value(text, "gemmakit_time_to_first_token_seconds_bucket", le="0.3", **lab) == 1
    assert value(text, "gemmakit_time_to_first_token_seconds_bucket", le="0.2", **lab) == 0
    # engine gauges, read at scrape time; process memory
    assert value(text, "gemmakit_requests_running", **lab) == 3
    assert value(text, "gemmakit_requests_waiting", **lab) == 2
    assert value(text, "gemmakit_kv_cache_usage_ratio", **lab) == 0.25
    assert value(text, "process_resident_memory_bytes") > 0


def test_requests_refused_while_loading_are_counted(make_client):
    import threading

    release = threading.Event()
    engine = FakeEngine()

    def slow_load():
        release.wait(10)
        return engine

    c = make_client(load_engine=slow_load, wait=False)
    r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 503
    text = c.get("/metrics").text
    release.set()
    assert value(text, "gemmakit_requests_total", model=M, status="503") == 1
    assert value(text, "gemmakit_prompt_tokens_total", model=M) == 0
    assert "gemmakit_kv_cache_usage_ratio{" not in text  # unknown: no sample, not a made-up 0


def test_openmetrics_on_request(make_client):
    c = make_client()
    r = c.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def test_series_of_the_served_model_exist_from_start_up(make_client):
    """A fresh server's rate() panels and alerts need the series before the first request."""
    text = make_client(FakeEngine()).get("/metrics").text
    names = {name for name, _ in samples(text)}
    for name in ("gemmakit_requests_total", "gemmakit_prompt_tokens_total",
                 "gemmakit_generation_tokens_total", "gemmakit_time_to_first_token_seconds_count",
                 "gemmakit_time_per_output_token_seconds_count",
                 "gemmakit_e2e_request_latency_seconds_count",
                 "gemmakit_request_queue_time_seconds_count"):
        assert name in names, name
    assert value(text, "gemmakit_requests_total", model=M, status="200") == 0
    assert ("gemmakit_requests_total", (("model", M), ("status", "200"))) in samples(text)


def test_judge_generations_are_internal_and_counters_still_equal_usage(make_client):
    """With the content-policy judge on input and output, the user's counters are exactly the
    response's usage; the judge's own generations are counted apart (kind="judge")."""
    from tests.unit.safety.test_classifier import verdict

    engine = FakeEngine(context_length=4096)
    c = make_client(engine, policy={"classifier": {"enabled": True,
                                                   "apply_to": ["input", "output"]}})
    engine.queue_chunks(verdict(0.1))  # the input judge: safe
    engine.queue_text("All", " fine")  # the answer
    engine.queue_chunks(verdict(0.1))  # the output judge: safe
    r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert len(engine.requests) == 3
    judge_prompts = len(engine.requests[0].prompt_tokens) + len(engine.requests[2].prompt_tokens)
    text = c.get("/metrics").text
    assert value(text, "gemmakit_prompt_tokens_total", model=M) == usage["prompt_tokens"]
    assert value(text, "gemmakit_generation_tokens_total", model=M) == usage["completion_tokens"]
    assert value(text, "gemmakit_requests_total", model=M, status="200") == 1
    assert value(text, "gemmakit_internal_requests_total", model=M, kind="judge",
                 status="200") == 2
    assert value(text, "gemmakit_internal_prompt_tokens_total", model=M, kind="judge") == \
        judge_prompts
    assert value(text, "gemmakit_internal_generation_tokens_total", model=M, kind="judge") == 2
