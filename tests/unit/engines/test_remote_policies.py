"""The remote engine's mechanisms on their own: the circuit breaker, the routing policies and the
pool's choice (never an ejected upstream while a healthy one exists)."""

from __future__ import annotations

import collections
import random

import pytest

from gemmakit.engines.remote.breaker import CircuitBreaker
from gemmakit.engines.remote.routing import LeastOutstanding, PrefixAffinity, WeightedRoundRobin
from gemmakit.engines.remote.upstreams import Pool, Upstream, base_url
from gemmakit.errors import ServiceUnavailableError


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_consecutive_failures_half_opens_and_closes() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, cooldown=5.0, clock=clock)
    b.failure()
    b.failure()
    b.success()  # a success resets the count: failures must be consecutive
    b.failure()
    b.failure()
    assert b.state == "closed" and b.allows()
    b.failure()
    assert b.state == "open" and not b.allows() and not b.acquire()
    assert b.retry_in() == pytest.approx(5.0)
    clock.t = 5.0
    assert b.state == "half_open"
    assert b.acquire()  # the single trial
    assert not b.acquire() and not b.allows()
    b.failure()  # the trial failed: a whole cooldown again
    assert b.state == "open" and b.retry_in() == pytest.approx(5.0)
    clock.t = 10.0
    assert b.acquire()
    b.release()  # a trial that ended neither way is given back
    assert b.acquire()
    b.success()
    assert b.state == "closed" and b.consecutive == 0 and b.opens == 1


def _ups(n: int, **kw) -> list[Upstream]:
    ups = [Upstream(f"http://127.0.0.1:{9000 + i}/v1/", model="m", configured_kind="gemmakit",
                    **kw) for i in range(n)]
    return ups


def test_upstream_names_and_urls() -> None:
    (u,) = _ups(1)
    assert u.url == "http://127.0.0.1:9000" and u.name == "127.0.0.1:9000"
    assert base_url("https://h/x/v1") == "https://h/x"
    assert Upstream("http://h:1", key="k").headers() == {"Authorization": "Bearer k"}


def test_least_outstanding_takes_the_less_loaded_of_two() -> None:
    ups = _ups(2)
    ups[0].inflight, ups[1].inflight = 5, 1
    p = LeastOutstanding(random.Random(0))
    assert all(p.choose(ups, []) is ups[1] for _ in range(20))
    # with more upstreams the least loaded one always wins one of its pairs, the most loaded
    # never wins
    ups = _ups(4)
    for i, u in enumerate(ups):
        u.inflight = i
    picks = collections.Counter(p.choose(ups, []).name for _ in range(400))
    assert ups[3].name not in picks
    assert picks[ups[0].name] > picks[ups[2].name]


def test_prefix_affinity_is_stable_and_bounded() -> None:
    ups = _ups(3)
    p = PrefixAffinity(n_tokens=4, imbalance=2, rng=random.Random(0))
    a = p.choose(ups, [1, 2, 3, 4, 99])
    # the same first 4 tokens, a different tail (the next turn of a chat): the same upstream
    assert all(p.choose(ups, [1, 2, 3, 4, k]) is a for k in range(10))
    owners = {p.owner(ups, [k, 0, 0, 0]).name for k in range(60)}
    assert len(owners) == 3  # keys spread over every upstream
    # removing another upstream does not move this key (rendezvous hashing)
    others = [u for u in ups if u is not a]
    assert p.owner([a, others[0]], [1, 2, 3, 4]) is a
    # overloaded beyond the bound: least outstanding instead
    a.inflight = 3
    assert p.choose(ups, [1, 2, 3, 4]) is not a
    a.inflight = 2  # exactly the bound: still the owner
    assert p.choose(ups, [1, 2, 3, 4]) is a
    assert p.owner_hits == p.routed - 1


def test_weighted_round_robin_follows_weights_interleaved() -> None:
    ups = _ups(3)
    ups[0].weight, ups[1].weight, ups[2].weight = 3.0, 1.0, 1.0
    p = WeightedRoundRobin()
    seq = [p.choose(ups, []).name for _ in range(50)]
    counts = collections.Counter(seq)
    assert counts[ups[0].name] == 30 and counts[ups[1].name] == 10
    assert ups[0].name * 4 not in "".join(s[-1] for s in seq)  # smooth: never long bursts
    assert max(len(list(g)) for g in _runs(seq)) <= 2


def _runs(seq):
    import itertools

    return [list(g) for _, g in itertools.groupby(seq)]


def test_pool_never_routes_to_an_ejected_upstream_while_one_is_healthy() -> None:
    clock = Clock()
    ups = _ups(3)
    for u in ups:
        u.breaker = CircuitBreaker(failures=1, cooldown=5.0, clock=clock)
    pool = Pool(ups, LeastOutstanding(random.Random(1)))
    ups[0].breaker.failure()
    ups[1].breaker.failure()
    assert all(pool.choose([]) is ups[2] for _ in range(30))
    clock.t = 6.0  # 0 and 1 half-open, 2 healthy: still only 2
    assert all(pool.choose([]) is ups[2] for _ in range(30))
    ups[2].breaker.failure()
    clock.t = 6.5  # 2 open; 0 and 1 half-open: one trial each, then nothing
    first = pool.choose([])
    second = pool.choose([], exclude={first})
    assert {first, second} == {ups[0], ups[1]}
    with pytest.raises(ServiceUnavailableError) as e:
        pool.choose([])
    assert e.value.headers == {"Retry-After": "1"}  # the trials in flight may end soon
    # an upstream whose kind or model is not known yet is never chosen
    unknown = Upstream("http://127.0.0.1:1")
    pool2 = Pool([unknown, ups[2]], LeastOutstanding())
    ups[2].breaker.success()
    assert pool2.choose([]) is ups[2]


def test_learn_kind_model_and_context_from_models() -> None:
    u = Upstream("http://h:1")
    u.learn({"data": [{"id": "google/gemma-3-270m", "owned_by": "vllm", "max_model_len": 32768}]})
    assert (u.kind, u.model, u.context_length) == ("vllm", "google/gemma-3-270m", 32768)
    v = Upstream("http://h:2")
    v.learn({"data": [{"id": "x.gguf", "owned_by": "llamacpp"}]})
    assert v.kind == "llama-server"
    w = Upstream("http://h:3", model="b")
    w.learn({"data": [{"id": "a", "owned_by": "gemmakit", "context_length": 1},
                      {"id": "b", "owned_by": "gemmakit", "context_length": 2048}]})
    assert (w.kind, w.model, w.context_length) == ("gemmakit", "b", 2048)
    o = Upstream("http://h:4")
    o.learn({"data": [{"id": "m", "owned_by": "someone"}]})
    assert o.kind == "openai"


def test_prefix_affinity_follows_the_longest_routed_prefix() -> None:
    ups = _ups(3)
    p = PrefixAffinity(n_tokens=64, imbalance=4, rng=random.Random(0))
    for conv in range(20):
        turn = [conv, *range(100, 139)]  # 40 tokens: shorter than the 64 hashed
        first = p.choose(ups, turn)
        for _ in range(3):  # each next turn extends the whole previous prompt
            turn = [*turn, *range(200, 230)]
            assert p.choose(ups, turn) is first
    # a fresh prompt sharing no whole block goes by its rendezvous owner
    assert p.owner(ups, [7] * 10) is p.owner(ups, [7] * 10)
    # a bounded table: the oldest blocks are forgotten first
    small = PrefixAffinity(n_tokens=64, imbalance=4, table_size=3)
    small.choose(ups, list(range(16 * 5)))
    assert len(small.table) == 3
