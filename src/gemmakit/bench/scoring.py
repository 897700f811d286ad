"""`gemmakit bench --scoring`: what scoring a prompt (`echo` with `logprobs`: the logprob of every
prompt token, in the prompt's one forward pass) costs against prefilling it plainly.

One engine, loaded once; plain and scored runs take turns on the same distinct prompts (plain,
scored, plain, scored…) so drift in the machine's speed hits both alike, with the prefix cache
off so both compute the whole prompt. Plain: `max_tokens` 1, the time until the first token.
Scored: `max_tokens` 0 with `prompt_logprobs` 1, the time until the scored prompt arrives. The
ratio is the median of the per-round paired ratios.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from gemmakit.bench.measure import _FILLER


def run_scoring(settings: Any, prompt_tokens: int, repeats: int) -> dict[str, Any]:
    from gemmakit.compose import plan
    from gemmakit.types import GenerationRequest, SamplingParams

    p = plan(settings, progress=False)
    engine = p.load_engine()
    plain_sp = SamplingParams(temperature=0, max_tokens=1)
    scored_sp = SamplingParams(temperature=0, max_tokens=0, prompt_logprobs=1)
    filler = engine.tokenize(_FILLER)
    bos = engine.tokenize("<bos>", special=True)

    def prompt(k: int) -> list[int]:
        # distinct from the first token on: nothing shared for a cache to give
        ids = engine.tokenize(f"Document {k}. ")
        while len(ids) < prompt_tokens - 1:
            ids += filler
        return bos + ids[: prompt_tokens - 1]

    async def timed(ids: list[int], sp: SamplingParams) -> tuple[float, int]:
        req = GenerationRequest(prompt_tokens=ids, sampling=sp, request_id="bench")
        t0 = time.perf_counter()
        scored = 0
        async for chunk in engine.stream(req):
            if chunk.prompt_logprobs is not None:
                scored = len(chunk.prompt_logprobs)
            if sp.max_tokens == 1 or chunk.finish_reason is not None:
                return time.perf_counter() - t0, scored
        raise RuntimeError("the stream ended without a finish")

    async def go() -> dict[str, Any]:
        if hasattr(engine, "prefix_cache"):
            engine.prefix_cache = False
        plain, scored, ratios = [], [], []
        for k in range(repeats + 1):  # round 0 warms up
            a, _ = await timed(prompt(2 * k), plain_sp)
            b, n = await timed(prompt(2 * k + 1), scored_sp)
            if n != prompt_tokens - 1:
                raise RuntimeError(f"scored {n} of {prompt_tokens - 1} prompt tokens")
            if k:
                plain.append(a)
                scored.append(b)
                ratios.append(b / a)
        await engine.aclose()
        return {
            "engine": engine.name, "model": p.served_name, "prompt_tokens": prompt_tokens,
            "repeats": repeats,
            "plain_prefill_s": round(statistics.median(plain), 4),
            "scored_prefill_s": round(statistics.median(scored), 4),
            "plain_prefill_tokens_per_s": round(prompt_tokens / statistics.median(plain), 1),
            "scored_prefill_tokens_per_s": round(prompt_tokens / statistics.median(scored), 1),
            "scored_over_plain": round(statistics.median(ratios), 3),
            "target_scored_over_plain_le_2": statistics.median(ratios) <= 2.0,
        }

    return asyncio.run(go())
