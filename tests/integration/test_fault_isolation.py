"""Fault isolation in the llama.cpp engine, with faults injected into one sequence (monkeypatch
puts the engine's real methods back after each test): a failure while building or running one
request's sampler (or grammar, or detokenizing) ends that request alone, with a clear error, and
the engine keeps serving everyone else."""

from __future__ import annotations

import asyncio
import json

import pytest

from gemmakit.errors import EngineError, InvalidRequestError
from gemmakit.types import GenerationRequest, SamplingParams

pytestmark = pytest.mark.integration

MODEL = "gemma-3-270m"


def _req(engine, rid: str, **sp) -> GenerationRequest:
    sampling = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, **sp)
    return GenerationRequest(prompt_tokens=[2, *engine.tokenize("The river flows")],
                             sampling=sampling, request_id=rid)


async def _drain(stream) -> tuple[int, str | None]:
    n, finish = 0, None
    async for c in stream:
        n += len(c.token_ids)
        finish = c.finish_reason or finish
    return n, finish


async def _pair(engine, faulty: GenerationRequest, healthy: GenerationRequest):
    (bad,), (good,) = engine.submit([faulty]), engine.submit([healthy])
    return await asyncio.gather(_drain(bad), _drain(good), return_exceptions=True)


def test_a_failing_sampler_ends_its_request_only(engine, monkeypatch):
    real = engine._make_sampler

    def faulty(req):
        if req.request_id == "bad":
            raise RuntimeError("injected fault while building the sampler")
        return real(req)

    monkeypatch.setattr(engine, "_make_sampler", faulty)
    bad, good = asyncio.run(_pair(engine, _req(engine, "bad", seed=1), _req(engine, "good")))
    assert isinstance(bad, EngineError) and bad.status == 500
    assert good == (16, "length")
    assert engine.health().ok
    assert asyncio.run(_drain(engine.stream(_req(engine, "after")))) == (16, "length")
    assert engine.kv_accounting()["consistent"]


def test_a_fault_while_sampling_ends_its_request_only(engine, monkeypatch):
    real = engine._logprobs_at

    def faulty(idx, top_n):
        raise RuntimeError("injected fault while sampling")

    monkeypatch.setattr(engine, "_logprobs_at", faulty)  # logprobs requests only
    bad, good = asyncio.run(_pair(engine, _req(engine, "bad", logprobs=True),
                                  _req(engine, "good")))
    assert isinstance(bad, EngineError)
    assert good == (16, "length")
    monkeypatch.setattr(engine, "_logprobs_at", real)
    assert asyncio.run(_drain(engine.stream(_req(engine, "after", logprobs=True)))) == \
        (16, "length")
    assert engine.health().ok and engine.kv_accounting()["consistent"]


def test_a_fault_detokenizing_ends_its_request_only(engine, monkeypatch):
    real = engine.token_piece
    poisoned = engine.tokenize(" ocean")[0]

    def faulty(token):
        if token == poisoned:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
        return real(token)

    monkeypatch.setattr(engine, "token_piece", faulty)
    # The faulty request is made to sample the poisoned token at once; the other never does.
    bad = _req(engine, "bad", logit_bias={poisoned: 100.0})
    good = _req(engine, "good", logit_bias={poisoned: -100.0})
    bad_result, good_result = asyncio.run(_pair(engine, bad, good))
    assert isinstance(bad_result, EngineError)
    assert good_result == (16, "length")
    assert engine.health().ok


def test_a_grammar_the_request_caused_is_a_400(engine, monkeypatch):
    from gemmakit.engines.llamacpp import _RequestFault

    real = engine._make_sampler

    def refuses(req):
        if req.request_id == "bad":
            raise _RequestFault("llama.cpp refused the request's grammar")
        return real(req)

    monkeypatch.setattr(engine, "_make_sampler", refuses)
    bad, good = asyncio.run(_pair(engine, _req(engine, "bad"), _req(engine, "good")))
    assert isinstance(bad, InvalidRequestError) and bad.status == 400
    assert good == (16, "length")


def test_http_fault_is_a_500_naming_the_request_and_the_server_keeps_serving(
        make_client, model_path):
    """Through the app: the faulty request gets a 500 with its request id, the next one a 200;
    a lone surrogate in a message is a 400 naming the param, never a 500."""
    from gemmakit.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(model_path, context_length=512, parallel=2)
    real = engine._logprobs_at

    def faulty(idx, top_n):
        raise RuntimeError("injected fault while sampling")

    engine._logprobs_at = faulty
    c = make_client(engine, model_name=MODEL)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    r = c.post("/v1/chat/completions", json={**body, "logprobs": True})
    assert r.status_code == 500
    rid = r.headers["x-request-id"]
    assert rid in r.json()["error"]["message"] and "injected" not in r.text
    engine._logprobs_at = real
    assert c.post("/v1/chat/completions", json=body).status_code == 200
    assert c.get("/health").json()["status"] == "ok"
    raw = json.dumps({**body, "messages": [{"role": "user", "content": "a \ud800 b"}]})
    r = c.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"
    r = c.post("/v1/completions", content=json.dumps({"model": MODEL, "prompt": ["ok", "\udfff"],
                                                      "max_tokens": 4}),
               headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt[1]"
