"""`gemmakit top`'s arithmetic: /metrics parsed by prometheus-client, rates and interval
percentiles between two scrapes (PromQL's rate() and histogram_quantile())."""

from __future__ import annotations

import pytest

from gemmakit.monitoring.scrape import figures, histogram_quantile, parse
from gemmakit.types import Chunk, ChunkStats
from tests.conftest import CHAR_BASE, FakeEngine

CHAT = {"model": "gemma-test", "messages": [{"role": "user", "content": "hi"}]}


def test_histogram_quantile_interpolates_like_promql():
    buckets = {0.1: 10.0, 0.5: 30.0, 1.0: 40.0, float("inf"): 40.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.5 + 0.5 * (38 - 30) / 10)
    assert histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.99, {1.0: 0.0, float("inf"): 5.0}) == 1.0  # past the last bound


def _reply(ttft: float) -> list:
    return [Chunk(text="a", token_ids=[CHAR_BASE]), Chunk(text="b", token_ids=[CHAR_BASE]),
            Chunk(finish_reason="stop", stats=ChunkStats(
                completion_tokens=2, time_to_first_token_s=ttft, decode_tokens_per_s=50.0))]


def test_figures_between_two_scrapes(make_client):
    engine = FakeEngine()
    c = make_client(engine)
    engine.queue_chunks(_reply(0.05))
    c.post("/v1/chat/completions", json=CHAT)
    first = parse(c.get("/metrics").text, t=100.0)
    for ttft in (0.3, 0.3, 0.3):
        engine.queue_chunks(_reply(ttft))
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert c.post("/v1/chat/completions", json={**CHAT, "model": "nope"}).status_code == 404
    second = parse(c.get("/metrics").text, t=102.0)

    f = figures(second, first)
    assert f.interval_s == 2.0
    assert f.request_rate == pytest.approx(4 / 2)
    assert f.statuses == {"200": 3, "404": 1}
    assert f.success_rate == 1.0  # a 404 is the client's mistake
    assert f.generation_tokens_per_s == pytest.approx(6 / 2)
    # the interval saw three TTFTs of 0.3 s: bucket (0.2, 0.3]; the first scrape's 0.05 is gone
    assert 0.2 < f.ttft_p50 <= 0.3 and 0.2 < f.ttft_p95 <= 0.3
    assert f.tpot_p50 == pytest.approx(0.02, abs=0.01)
    life = figures(second, None)
    assert life.requests_total == 5 and life.statuses == {"200": 4, "404": 1}
    assert life.ttft_p50 <= 0.3 and life.memory_rss_bytes > 0
