"""Scoring on the transformers engine: a prompt's logprobs from its chunked forward pass, the
same as the llama.cpp engine's on the same weights, and generation after a scored prompt the same
as after a plain one."""

from __future__ import annotations

import asyncio

from gemmakit.types import GenerationRequest, SamplingParams


def _run(engine, ids, sp):
    async def go():
        return [c async for c in engine.stream(GenerationRequest(ids, sp, "t"))]
    return asyncio.run(go())


def test_scores_agree_with_the_llamacpp_engine(hf_engine, engine):
    ids = [2] + hf_engine.tokenize("The quick brown fox jumps over the lazy dog. " * 15)
    assert len(ids) > 128  # several chunks
    sp = SamplingParams(temperature=0, max_tokens=0, prompt_logprobs=2)
    hf = _run(hf_engine, ids, sp)
    ll = _run(engine, ids, sp)
    for chunks in (hf, ll):
        assert [c.finish_reason for c in chunks] == ["length"]
        assert len(chunks[0].prompt_logprobs) == len(ids) - 1
    a = [e.logprob for e in hf[0].prompt_logprobs]
    b = [e.logprob for e in ll[0].prompt_logprobs]
    # dense weights dequantized from the same GGUF: only the arithmetic differs
    assert sum(abs(x - y) for x, y in zip(a, b)) / len(a) < 0.05
    assert [e.token for e in hf[0].prompt_logprobs] == [e.token for e in ll[0].prompt_logprobs]
    assert all(len(e.top) == 2 and e.top[0].logprob >= e.top[1].logprob
               for e in hf[0].prompt_logprobs)


def test_generation_after_a_scored_prompt_is_unchanged(hf_engine):
    ids = [2] + hf_engine.tokenize("Water boils at a temperature of " * 12)
    plain = _run(hf_engine, ids, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    scored = _run(hf_engine, ids, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True,
                                                 prompt_logprobs=0))
    assert [t for c in scored for t in c.token_ids] == [t for c in plain for t in c.token_ids]
    assert scored[0].prompt_logprobs is not None and plain[0].prompt_logprobs is None
    assert all(e.top == () for e in scored[0].prompt_logprobs)
