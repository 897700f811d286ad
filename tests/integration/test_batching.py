"""Continuous batching, admission control, cancellation and graceful shutdown on the real
server and engine (issue 3)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import threading
import time

import httpx
import pytest

from gemmakit.engines.llamacpp import LlamaCppEngine
from gemmakit.errors import OverloadedError
from gemmakit.types import GenerationRequest, SamplingParams

from .conftest import MODEL, start_server

pytestmark = pytest.mark.integration

PROMPTS = ["The capital of Italy is", "Water boils at", "My favourite book is",
           "The largest planet is", "In 1969, astronauts", "A good breakfast has",
           "The recipe for bread", "Music from the 1980s"]


@pytest.fixture(scope="module")
def batch_engine(model_path):
    eng = LlamaCppEngine(model_path, context_length=512, parallel=8, max_queue=4)
    yield eng
    asyncio.run(eng.aclose())


def _req(engine, text, **sp):
    return GenerationRequest(prompt_tokens=[2, *engine.tokenize(text)], request_id=text,
                             sampling=SamplingParams(**sp))


async def _collect(stream):
    text, ids, finish = "", [], None
    async for c in stream:
        text += c.text
        ids += c.token_ids
        finish = c.finish_reason or finish
    return text, ids, finish


def test_concurrent_greedy_is_exactly_llama_cpp_batched(batch_engine, model_path):
    """The engine adds nothing of its own to batched decoding: 8 prompts decoded together give
    token for token what raw llama.cpp batched decoding of the same 8 gives (same schedule)."""
    from gemmakit.bench.raw import RawBatch

    eng = batch_engine

    async def together():
        streams = eng.submit([_req(eng, p, temperature=0, max_tokens=24, ignore_eos=True)
                              for p in PROMPTS])
        return await asyncio.gather(*(_collect(s) for s in streams))

    ours = [ids for _, ids, _ in asyncio.run(together())]
    raw = RawBatch(model_path, n_seq=8, context_length=512, threads=eng.threads)
    try:
        ref, _ = raw.greedy([[2, *eng.tokenize(p)] for p in PROMPTS], 24)
    finally:
        raw.close()
    assert ours == ref


def test_concurrent_greedy_against_alone_within_documented_tolerance(batch_engine):
    """llama.cpp's batched kernels are not bit-exact across batch shapes (measured: see
    docs/batching.md), so greedy text under concurrency may part from the text alone where two
    candidates are nearly tied. Documented tolerance: every sequence agrees on its first token,
    and the prompts agree on at least half of all tokens before parting."""
    eng = batch_engine

    async def alone():
        return [await _collect(eng.stream(_req(eng, p, temperature=0, max_tokens=24,
                                                ignore_eos=True))) for p in PROMPTS]

    async def together():
        streams = eng.submit([_req(eng, p, temperature=0, max_tokens=24, ignore_eos=True)
                              for p in PROMPTS])
        return await asyncio.gather(*(_collect(s) for s in streams))

    a = asyncio.run(alone())
    b = asyncio.run(together())
    agree = [next((i for i, (u, v) in enumerate(zip(x[1], y[1])) if u != v), 24)
             for x, y in zip(a, b)]
    assert all(n >= 1 for n in agree), agree
    assert sum(agree) >= 0.5 * 24 * len(PROMPTS), agree


def test_streams_never_interleave(batch_engine):
    """Each stream's chunks rebuild exactly its own token sequence (and its own text)."""
    eng = batch_engine

    async def go():
        streams = eng.submit([_req(eng, p, temperature=0, max_tokens=16, ignore_eos=True)
                              for p in PROMPTS])
        return await asyncio.gather(*(_collect(s) for s in streams))

    results = asyncio.run(go())
    for (text, ids, finish) in results:
        assert len(ids) == 16 and finish == "length"
        assert text == eng.detokenize(ids)
    assert len({tuple(r[1]) for r in results}) > 1


def test_random_cancellations_leak_no_kv_cells(batch_engine):
    eng = batch_engine
    rng = random.Random(3)

    async def one(i):
        s = eng.submit([_req(eng, rng.choice(PROMPTS) + " " * (i % 3), max_tokens=64,
                             ignore_eos=True, seed=i)])[0]
        stop_after = rng.randint(0, 6)
        n = 0
        async for _ in s:
            n += 1
            if n >= stop_after:
                break
        await s.aclose()

    async def go():
        for wave in range(10):  # 100 cancellations, 10 at a time (8 slots + 4 queued at most)
            await asyncio.gather(*(one(wave * 10 + k) for k in range(10)),
                                 return_exceptions=False)

    async def run_all():
        try:
            await go()
        except OverloadedError:
            pass

    asyncio.run(run_all())
    deadline = time.time() + 10
    while eng.health().requests_running and time.time() < deadline:
        time.sleep(0.05)
    h = eng.health()
    assert h.requests_running == 0 and h.requests_waiting == 0
    acct = eng.kv_accounting()
    assert acct["consistent"], acct
    # The freed slots are usable at once.
    text, ids, finish = asyncio.run(_collect(eng.stream(_req(eng, "Hi", temperature=0,
                                                             max_tokens=3))))
    assert len(ids) == 3


def test_full_engine_refuses_at_once(model_path):
    eng = LlamaCppEngine(model_path, context_length=256, parallel=1, max_queue=1)

    async def go():
        running = eng.submit([_req(eng, "Once upon a time", max_tokens=200, ignore_eos=True)])
        queued = eng.submit([_req(eng, "Hello", max_tokens=2)])
        first = await running[0].__anext__()  # the first is generating
        with pytest.raises(OverloadedError) as ei:
            eng.submit([_req(eng, "Third", max_tokens=2)])
        assert int(ei.value.headers["Retry-After"]) >= 1
        # The refusal came while the running request was still generating: nothing waited.
        assert eng.health().requests_running == 1
        for s in (*running, *queued):
            await s.aclose()
        return first

    try:
        assert asyncio.run(go()).token_ids
    finally:
        asyncio.run(eng.aclose())


def test_prefix_reuse_on_multi_turn(batch_engine):
    eng = batch_engine
    turn1 = [2, *eng.tokenize("A long shared system prompt about the history of printing. " * 6)]

    async def go():
        a = await _collect_stats(eng.stream(GenerationRequest(
            prompt_tokens=turn1, request_id="a", sampling=SamplingParams(max_tokens=4,
                                                                          temperature=0))))
        turn2 = turn1 + a[0] + eng.tokenize(" And then?")
        b = await _collect_stats(eng.stream(GenerationRequest(
            prompt_tokens=turn2, request_id="b", sampling=SamplingParams(max_tokens=4,
                                                                          temperature=0))))
        return a[1], b[1], len(turn1)

    sa, sb, n1 = asyncio.run(go())
    assert sa.cached_prompt_tokens < n1  # nothing of this prompt was cached before (or little)
    assert sb.cached_prompt_tokens >= n1  # the whole first turn was reused


def test_prefix_reuse_checks_the_sliding_window(model_path):
    """Sliding-window layers keep only their window plus one micro-batch of positions (768 for
    Gemma 3), overwritten oldest first. A cached sequence that has gone on far past a shared
    prefix no longer holds the window that prefix's next token attends to: the prompt is then
    computed afresh (counted), and reads what a fresh engine gives; a continuation of the whole
    cached sequence (the next turn of a chat) is still reused."""
    eng = LlamaCppEngine(model_path, context_length=2048, parallel=1)
    shared = [2, *eng.tokenize("A shared system prompt about printing, paper and ink. " * 60)]
    long_a = shared + eng.tokenize(" Notes on the history of paper mills in Europe. " * 30)
    assert eng.n_swa == 512 and not eng.swa_full and len(shared) > 520
    assert len(long_a) - len(shared) > 300  # past the 256 positions the window can spare

    def run(engine, prompt, n):
        return asyncio.run(_collect_stats(engine.stream(GenerationRequest(
            prompt_tokens=prompt, request_id="w",
            sampling=SamplingParams(max_tokens=n, temperature=0)))))

    try:
        a_ids, _ = run(eng, long_a, 2)
        # The next turn of that conversation continues from the whole cached sequence, though
        # it is longer than the sliding layers' cells.
        a2 = long_a + a_ids + eng.tokenize(" And then?")
        a2_ids, a2_stats = run(eng, a2, 2)
        assert a2_stats.cached_prompt_tokens >= len(long_a) and len(a2) > 768
        oldest = eng._ll.llama_memory_seq_pos_min(eng._mem, 0)
        assert oldest > len(shared) - eng.n_swa  # the shared prefix's window is overwritten
        b = shared + eng.tokenize(" Who invented movable type?")
        b_ids, b_stats = run(eng, b, 8)
        assert b_stats.cached_prompt_tokens == 0 and eng.prefix_stats.window_refused == 1
        family = next(f for f in eng.metric_families()
                      if f.name == "gemmakit_prefix_reuse_window_refused")
        assert family.samples[0].value == 1
    finally:
        asyncio.run(eng.aclose())
    fresh = LlamaCppEngine(model_path, context_length=2048, parallel=1, prefix_cache=False)
    try:
        alone, _ = run(fresh, b, 8)
    finally:
        asyncio.run(fresh.aclose())
    assert b_ids == alone
    # With swa_full (--swa-full) every layer keeps the whole context: the same prefix is reused.
    full = LlamaCppEngine(model_path, context_length=2048, parallel=1, swa_full=True)
    try:
        run(full, long_a, 2)
        _, full_stats = run(full, b, 8)
        assert full_stats.cached_prompt_tokens == len(shared)
        assert full.prefix_stats.window_refused == 0
    finally:
        asyncio.run(full.aclose())


def test_running_sequences_keep_contiguous_ids(batch_engine):
    """llama.cpp runs each run of consecutive sequence ids as its own micro-batch (a whole extra
    pass over the weights), so a newcomer takes the free id that keeps the running ids in one run:
    here the gap a cancelled request leaves in the middle."""
    eng = batch_engine

    def running_ids():
        return {s["seq_id"] for s in eng.kv_accounting()["slots"] if s["running"]}

    async def go():
        streams = []
        for i in range(4):
            (s,) = eng.submit([_req(eng, PROMPTS[i], max_tokens=300, ignore_eos=True, seed=i)])
            await s.__anext__()  # admitted and generating
            streams.append(s)
        ids = sorted(s.seq_id for s in streams)
        assert ids == list(range(ids[0], ids[0] + 4)), ids
        middle = next(s for s in streams if s.seq_id == ids[1])
        await middle.aclose()
        while eng.health().requests_running > 3:
            await asyncio.sleep(0.01)
        (new,) = eng.submit([_req(eng, PROMPTS[5], max_tokens=300, ignore_eos=True)])
        await new.__anext__()
        got = new.seq_id, running_ids()
        for s in (*streams, new):
            await s.aclose()
        return ids, got

    ids, (new_id, running) = asyncio.run(go())
    assert new_id == ids[1]
    assert running == set(ids)
    deadline = time.time() + 10
    while eng.health().requests_running and time.time() < deadline:
        time.sleep(0.05)
    assert eng.kv_accounting()["consistent"]


def test_shared_prefix_is_copied_from_a_running_request(batch_engine):
    """Two requests with the same long system prompt, the second arriving while the first still
    generates: the second starts from a copy of the first one's cells (in its own sequence id) and
    computes only its own suffix; it reads exactly what a fresh computation gives."""
    eng = batch_engine
    shared = [2, *eng.tokenize("You are a careful assistant who answers questions about the "
                               "history of printing, paper and ink in plain words. " * 3)]
    second = shared + eng.tokenize(" Who invented movable type?")

    async def go():
        (first,) = eng.submit([GenerationRequest(
            prompt_tokens=shared + eng.tokenize(" Tell me about paper."), request_id="a",
            sampling=SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))])
        await first.__anext__()
        (s,) = eng.submit([GenerationRequest(prompt_tokens=second, request_id="b",
                                             sampling=SamplingParams(max_tokens=1,
                                                                     temperature=0))])
        ids, stats = await _collect_stats(s)
        acct = eng.kv_accounting()
        await first.aclose()
        return ids, stats, acct

    ids, stats, acct = asyncio.run(go())
    # The first request still runs in its own id, so the reused cells were copied across.
    assert stats.cached_prompt_tokens >= len(shared)
    assert acct["consistent"], acct
    fresh = LlamaCppEngine(eng.model_path, context_length=512, parallel=1, prefix_cache=False)
    try:
        alone, _ = asyncio.run(_collect_stats(fresh.stream(GenerationRequest(
            prompt_tokens=second, request_id="c",
            sampling=SamplingParams(max_tokens=1, temperature=0)))))
    finally:
        asyncio.run(fresh.aclose())
    assert ids == alone


async def _collect_stats(stream):
    ids, stats = [], None
    async for c in stream:
        ids += c.token_ids
        stats = c.stats or stats
    return ids, stats


# --- through the HTTP server -----------------------------------------------------------------
def test_server_queue_full_is_429_with_retry_after(gemmakit_home, model_path, tmp_path):
    s = start_server(gemmakit_home, tmp_path, "--parallel", "1", "--max-queue", "0",
                     "--context-length", "512")
    try:
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 300,
                "ignore_eos": True, "stream": True}
        with httpx.Client(timeout=60) as c, c.stream("POST", f"{s.base_url}/v1/completions",
                                                     json=body) as r1:
            lines = r1.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))
            r2 = c.post(f"{s.base_url}/v1/completions",
                        json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})
            assert r2.status_code == 429
            err = r2.json()["error"]
            assert err["type"] == "rate_limit_error" and err["code"] == "server_overloaded"
            assert int(r2.headers["retry-after"]) >= 1
    finally:
        s.proc.terminate()
        s.proc.wait(timeout=30)


def test_sigterm_ends_every_stream_with_a_final_event(gemmakit_home, model_path, tmp_path):
    s = start_server(gemmakit_home, tmp_path, "--parallel", "4", "--shutdown-timeout", "2",
                     "--context-length", "1024")
    results: dict[int, dict] = {}

    def consume(i: int) -> None:
        body = {"model": MODEL, "prompt": PROMPTS[i], "max_tokens": 900, "ignore_eos": True,
                "stream": True}
        finish, done, error = None, False, None
        with httpx.Client(timeout=120) as c, c.stream("POST", f"{s.base_url}/v1/completions",
                                                      json=body) as r:
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {"):
                    ev = json.loads(line[6:])
                    if "error" in ev:
                        error = ev["error"]
                    elif ev["choices"] and ev["choices"][0]["finish_reason"]:
                        finish = ev["choices"][0]["finish_reason"]
        results[i] = {"finish": finish, "done": done, "error": error}

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while time.time() < deadline:  # all four are generating
        h = httpx.get(f"{s.base_url}/health").json()
        if h.get("requests_running") == 4:
            break
        time.sleep(0.05)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    r = httpx.get(f"{s.base_url}/health")
    assert r.status_code == 503 and r.json()["status"] == "draining"
    r = httpx.post(f"{s.base_url}/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert r.status_code == 503 and "retry-after" in r.headers
    for t in threads:
        t.join(timeout=60)
    assert s.proc.wait(timeout=30) == 0
    assert len(results) == 4
    for res in results.values():
        assert res == {"finish": "shutdown", "done": True, "error": None}


def test_second_signal_ends_running_streams_at_once(gemmakit_home, model_path, tmp_path):
    """A second SIGTERM while draining: the running stream ends now, with its final event and
    finish_reason "shutdown", instead of running out the (here 120 s) drain; the exit is 0."""
    s = start_server(gemmakit_home, tmp_path, "--parallel", "1", "--shutdown-timeout", "120",
                     "--context-length", "1024")
    body = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 900, "ignore_eos": True,
            "stream": True}
    with httpx.Client(timeout=120) as c, c.stream("POST", f"{s.base_url}/v1/completions",
                                                  json=body) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: {"))
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        events = [first, *(line for line in lines if line)]
        ended_after = time.monotonic() - t0
    assert events[-1] == "data: [DONE]"
    last = json.loads(next(e for e in reversed(events) if e.startswith("data: {"))[6:])
    assert last["choices"][0]["finish_reason"] == "shutdown"
    tokens = sum(1 for e in events if e.startswith("data: {"))
    assert tokens < 900 and ended_after < 10
    assert s.proc.wait(timeout=30) == 0
