"""Sliding-window rate-limit stores: the in-process one with a controlled clock, and the Redis one
against a real redis-server (the same contract)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from gemmakit.safety.ratelimit import WINDOW_S, Limits, format_reset, headers_for, open_store
from gemmakit.safety.ratelimit.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def run(coro):
    return asyncio.run(coro)


def test_rpm_sliding_window_expires_each_entry_after_60_s():
    clock = Clock()
    s = MemoryStore(clock=clock)
    lim = Limits(rpm=3)
    for i in range(3):
        clock.t += 10
        assert run(s.acquire("k", lim, entry=f"r{i}", requests=1)).allowed
    d = run(s.acquire("k", lim, entry="r3", requests=1))
    assert not d.allowed and d.remaining_requests == 0
    assert d.retry_after_s == pytest.approx(WINDOW_S - 20)  # the oldest frees at t0 + 10 + 60
    clock.t += d.retry_after_s - 0.001
    assert not run(s.acquire("k", lim, entry="r3", requests=1)).allowed
    clock.t += 0.002
    assert run(s.acquire("k", lim, entry="r3", requests=1)).allowed
    # no fixed-bucket edge: right after, still only what the last 60 s allow
    assert not run(s.acquire("k", lim, entry="r4", requests=1)).allowed


def test_tpm_reservation_and_correction():
    clock = Clock()
    s = MemoryStore(clock=clock)
    lim = Limits(tpm=100)
    assert run(s.acquire("k", lim, entry="a", tokens=60)).remaining_tokens == 40
    assert not run(s.acquire("k", lim, entry="b", tokens=50)).allowed
    run(s.adjust("k", "a", 20))  # a finished using 20
    d = run(s.acquire("k", lim, entry="b", tokens=50))
    assert d.allowed and d.remaining_tokens == 30
    too_big = run(s.acquire("k", lim, entry="c", tokens=101))
    assert not too_big.allowed and too_big.too_large


def test_keys_are_independent():
    s = MemoryStore()
    lim = Limits(rpm=1)
    assert run(s.acquire("a", lim, entry="1", requests=1)).allowed
    assert not run(s.acquire("a", lim, entry="2", requests=1)).allowed
    assert run(s.acquire("b", lim, entry="3", requests=1)).allowed


def test_headers_and_reset_format():
    s = MemoryStore()
    lim = Limits(rpm=5, tpm=1000)
    d = run(s.acquire("k", lim, entry="x", requests=1, tokens=10))
    h = dict(headers_for(lim, d))
    assert h[b"x-ratelimit-limit-requests"] == b"5"
    assert h[b"x-ratelimit-remaining-requests"] == b"4"
    assert h[b"x-ratelimit-remaining-tokens"] == b"990"
    assert h[b"x-ratelimit-reset-tokens"].endswith(b"s")
    assert format_reset(0.25) == "250ms" and format_reset(1.5) == "1.5s"
    assert format_reset(360) == "6m0s"
    assert dict(headers_for(Limits(rpm=5), d)).get(b"x-ratelimit-limit-tokens") is None


def test_unknown_store_is_a_config_error():
    from gemmakit.errors import ConfigError

    with pytest.raises(ConfigError):
        open_store("memcached://x")


# --- redis ------------------------------------------------------------------------------------
def test_redis_store_same_contract(redis_url):
    async def go():
        s = open_store(redis_url)
        key = f"t-{uuid.uuid4().hex}"
        lim = Limits(rpm=3, tpm=100)
        try:
            for i in range(3):
                d = await s.acquire(key, lim, entry=f"r{i}", requests=1)
                assert d.allowed and d.remaining_requests == 2 - i
            d = await s.acquire(key, lim, entry="r3", requests=1)
            assert not d.allowed and 0 < d.retry_after_s <= WINDOW_S
            d = await s.acquire(key, lim, entry="t1", tokens=60)
            assert d.allowed and d.remaining_tokens == 40
            assert not (await s.acquire(key, lim, entry="t2", tokens=50)).allowed
            await s.adjust(key, "t1", 20)
            d = await s.acquire(key, lim, entry="t2", tokens=50)
            assert d.allowed and d.remaining_tokens == 30
            assert (await s.acquire(key, lim, entry="t3", tokens=101)).too_large
        finally:
            await s.aclose()

    run(go())


def test_redis_concurrent_burst_stays_within_limit(redis_url):
    async def go():
        stores = [open_store(redis_url) for _ in range(4)]  # four "replicas"
        key = f"burst-{uuid.uuid4().hex}"
        lim = Limits(rpm=25)
        try:
            results = await asyncio.gather(*(
                stores[i % 4].acquire(key, lim, entry=f"e{i}", requests=1) for i in range(50)))
        finally:
            for s in stores:
                await s.aclose()
        return sum(d.allowed for d in results)

    assert run(go()) == 25
