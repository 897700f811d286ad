"""/ready: a real generation probe, cached, judged against a threshold."""

from __future__ import annotations

import asyncio
import threading

from gemmakit.errors import EngineError
from tests.conftest import FakeEngine
from tests.unit.monitoring.helpers import value


class SlowEngine(FakeEngine):
    """Takes `delay` seconds before its first token (a loaded or stuck engine)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def stream(self, request):
        await asyncio.sleep(self.delay)
        async for chunk in super().stream(request):
            yield chunk


def test_healthy_probe_runs_a_real_generation_and_is_cached(make_client):
    engine = FakeEngine()
    c = make_client(engine, monitoring={"ready_cache_seconds": 3600})
    r = c.get("/ready")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy" and body["errors"] == []
    assert body["probe_latency_seconds"] >= 0 and body["memory"]["rss_bytes"] > 0
    assert len(engine.requests) == 1
    assert engine.requests[0].sampling.max_tokens == 1
    for _ in range(5):
        assert c.get("/ready").json()["status"] == "healthy"
    assert len(engine.requests) == 1  # cached: probes cannot load the server
    # the probe is not a client request
    text = c.get("/metrics").text
    assert value(text, "gemmakit_requests_total", model="gemma-test", status="200") == 0


def test_slow_probe_is_degraded(make_client):
    c = make_client(SlowEngine(0.3), monitoring={"ready_threshold_seconds": 0.05,
                                                 "ready_cache_seconds": 0})
    r = c.get("/ready")
    assert r.status_code == 200  # still serving: keep it in rotation, but say so
    body = r.json()
    assert body["status"] == "degraded"
    assert body["probe_latency_seconds"] >= 0.3
    assert "threshold" in body["errors"][0]


def test_probe_past_the_timeout_or_failing_is_unhealthy(make_client):
    c = make_client(SlowEngine(5), monitoring={"ready_timeout_seconds": 0.1,
                                               "ready_cache_seconds": 0})
    r = c.get("/ready")
    assert r.status_code == 503
    assert r.json()["status"] == "unhealthy"
    assert "not answered within" in r.json()["errors"][0]

    engine = FakeEngine()
    c = make_client(engine, monitoring={"ready_cache_seconds": 0})
    engine.queue_error(EngineError("boom"))
    r = c.get("/ready")
    assert r.status_code == 503 and "probe failed" in r.json()["errors"][0]
    engine.healthy = False
    r = c.get("/ready")
    assert r.status_code == 503 and any("engine" in e for e in r.json()["errors"])


def test_not_ready_while_loading(make_client):
    release = threading.Event()
    engine = FakeEngine()

    def slow_load():
        release.wait(10)
        return engine

    c = make_client(load_engine=slow_load, wait=False)
    r = c.get("/ready")
    release.set()
    assert r.status_code == 503 and r.json()["status"] == "unhealthy"
    assert r.headers["retry-after"] == "1"
