"""Scoring a prompt: the shared log-softmax over logits rows (both engines use it), and the
echo encoding of /v1/completions through the real app over the fake engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gemmakit.engines.common import scored_tokens

MODEL = "gemma-test"
V = 5000


def _reference(rows: np.ndarray, targets: list[int]) -> np.ndarray:
    r = rows.astype(np.float64)
    m = r.max(axis=1, keepdims=True)
    lse = np.log(np.exp(r - m).sum(axis=1)) + m[:, 0]
    return r[np.arange(len(targets)), targets] - lse


@pytest.mark.parametrize("shift", [0.0, 120.0, -150.0])
def test_logprobs_equal_a_float64_log_softmax(shift):
    """Exact for ordinary logits and for rows far outside exp's float32 range (the shifted path)."""
    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((7, V)) * 6 + shift).astype(np.float32)
    targets = [int(t) for t in rng.integers(0, V, 7)]
    out = scored_tokens(rows, targets, 3, lambda t: str(t).encode())
    ref = _reference(rows, targets)
    assert [e.token for e in out] == [str(t) for t in targets]
    assert np.allclose([e.logprob for e in out], ref, atol=1e-5)
    for row, e in zip(rows, out):
        alts = [int(a.token) for a in e.top]
        assert alts == list(np.argsort(-row, kind="stable")[:3])
        assert e.top[0].logprob >= e.top[1].logprob >= e.top[2].logprob >= e.logprob - 1e-9 \
            or int(e.token) in alts


@pytest.mark.parametrize("k", [4, 40])  # one thread, two
def test_top_one_is_the_argmax_in_place_or_not(k):
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((k, V)).astype(np.float32)
    before = rows.copy()
    targets = list(range(1, k + 1))
    b = scored_tokens(rows, targets, 1, lambda t: b"x")
    assert np.array_equal(rows, before)  # not in place: untouched
    a = scored_tokens(rows, targets, 1, lambda t: b"x", in_place=True)
    assert [e.logprob for e in a] == [e.logprob for e in b]
    assert np.allclose([e.logprob for e in a], _reference(before, targets), atol=1e-5)
    rows = before
    assert [len(e.top) for e in a] == [1] * k
    for row, e in zip(rows, a):
        assert e.top[0].logprob == pytest.approx(float(row.max()) - float(
            np.log(np.exp(row.astype(np.float64)).sum())), abs=1e-5)
    assert scored_tokens(rows[:0], [], 2, lambda t: b"") == []
    assert [e.top for e in scored_tokens(rows[:1], [0], 0, lambda t: b"")] == [()]


# --- /v1/completions echo over the fake engine ---------------------------------------------
def test_echo_with_logprobs_scores_the_prompt(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL)
    r = c.post("/v1/completions", json={"model": MODEL, "prompt": "abc", "echo": True,
                                        "logprobs": 1, "max_tokens": 0})
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    req = fake_engine.requests[0]
    assert req.sampling.prompt_logprobs == 1 and req.sampling.max_tokens == 0
    lp = choice["logprobs"]
    assert choice["text"] == "abc" and choice["finish_reason"] == "length"
    # <bos> first (the fake engine renders it as its markup), with nothing before it
    assert lp["tokens"] == ["<bos>", "a", "b", "c"]
    assert lp["token_logprobs"] == [None, -1.0, -1.0, -1.0]
    assert lp["top_logprobs"][0] is None
    assert lp["text_offset"] == [0, 5, 6, 7]
    assert r.json()["usage"]["prompt_tokens"] == len(req.prompt_tokens) == 4


def test_echo_prepends_the_prompt_to_each_choice_and_each_stream(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL)
    fake_engine.queue_text("X", "Y", finish_reason="length")
    r = c.post("/v1/completions", json={"model": MODEL, "prompt": ["ab", "cd"], "echo": True,
                                        "max_tokens": 2})
    texts = sorted(ch["text"] for ch in r.json()["choices"])
    assert texts == ["abXY", "cdok"]
    assert all(ch["logprobs"] is None for ch in r.json()["choices"])
    assert all(q.sampling.prompt_logprobs is None for q in fake_engine.requests)
    # streamed: the first event of the choice carries the prompt and its scores
    fake_engine.queue_text("X", "Y", finish_reason="length")
    events = []
    with c.stream("POST", "/v1/completions", json={
            "model": MODEL, "prompt": "ab", "echo": True, "logprobs": 0, "max_tokens": 2,
            "stream": True}) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:])["choices"][0])
    assert "".join(e["text"] for e in events) == "abXY"
    assert events[0]["text"].startswith("ab")
    assert events[0]["logprobs"]["token_logprobs"][:3] == [None, -1.0, -1.0]


def test_max_tokens_zero_needs_echo(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL)
    r = c.post("/v1/completions", json={"model": MODEL, "prompt": "abc", "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = c.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 0,
                                             "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert fake_engine.requests == []
