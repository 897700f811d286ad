"""`gemmakit bench --prompt-lookup K`: prompt-lookup (n-gram) speculative decoding against plain
decoding, one stream, greedy, in one engine with lookup switched on (drafting up to K tokens) and
off between requests, taking turns prompt by prompt so drift in the machine's speed hits both
alike. (One engine, not two side by side: two llama.cpp contexts in one process, driven from two
threads, slow each other down by a third once both have run.)

Two workloads: extractive (replies that copy from their prompt: a passage copied, a sentence
quoted, a function edited, a JSON object rewritten), where lookup should help, and free
continuations, where it mostly cannot. Decode speed per reply = (tokens - 1) / (last token time -
first token time); each workload's figure is the median over its replies and rounds. The report
also says how many replies lookup left token-for-token identical, next to how many plain
decoding itself changes when the same prompt is decoded beside three others (continuous
batching): llama.cpp's kernels are not bit-exact across batch shapes, so near-ties can go either
way in both cases.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

PASSAGE = ("The committee met on Tuesday to review the budget for the coming year. After a long "
           "discussion, the members agreed to increase funding for the public library by ten "
           "percent, to repair the bridge on Mill Street before winter, and to hire two new "
           "teachers for the primary school. The proposal to build a new swimming pool was "
           "postponed until the spring meeting, when the final cost estimates will be ready.")
CODE = ("def total_price(items, tax_rate):\n    subtotal = 0\n    for item in items:\n"
        "        subtotal += item.price * item.quantity\n    tax = subtotal * tax_rate\n"
        "    return subtotal + tax\n")
RECORD = json.dumps({"name": "Ada Lovelace", "born": 1815, "field": "mathematics",
                     "known_for": ["Analytical Engine notes", "first algorithm"],
                     "country": "England"})
EXTRACTIVE = [
    f"Text: {PASSAGE}\n\nThe same text, copied exactly:\n",
    f"Article: {PASSAGE}\n\nQuote the sentence about the swimming pool: \"",
    f"{CODE}\n# The same function, with subtotal renamed to base:\n",
    f"Input: {RECORD}\nThe same JSON with \"name\" renamed to \"full_name\":\n",
]
FREE = ["The history of the bicycle begins", "Write a short story about a dragon who",
        "Here are five tips for better sleep:\n1."]


def run_lookup(settings: Any, draft_tokens: int, gen_tokens: int, repeats: int
               ) -> dict[str, Any]:
    from gemmakit.compose import plan
    from gemmakit.engines.llamacpp import LlamaCppEngine
    from gemmakit.prompts import render_completion
    from gemmakit.types import GenerationRequest, SamplingParams

    p = plan(settings.model_copy(update={"parallel": 4}), progress=False)
    engine = p.load_engine()
    assert isinstance(engine, LlamaCppEngine)
    service = p.pipeline(engine).service

    def request(text: str) -> Any:
        return GenerationRequest(prompt_tokens=service.tokenize_prompt(render_completion(text)),
                                 sampling=SamplingParams(temperature=0, max_tokens=gen_tokens),
                                 request_id="bench")

    async def timed(lookup: bool, text: str) -> tuple[float, list[int]]:
        engine.prompt_lookup = draft_tokens if lookup else 0  # read at each step; idle now
        times: list[float] = []
        ids: list[int] = []
        async for chunk in engine.stream(request(text)):
            times += [time.perf_counter()] * len(chunk.token_ids)
            ids += chunk.token_ids
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        return rate, ids

    async def go() -> dict[str, Any]:
        prompts = [("extractive", t) for t in EXTRACTIVE] + [("free", t) for t in FREE]
        await timed(False, FREE[0])  # warm-up
        await timed(True, FREE[0])
        rates: dict[str, dict[str, list[float]]] = {
            w: {"plain": [], "lookup": []} for w in ("extractive", "free")}
        replies: dict[str, list[list[int]]] = {"plain": [], "lookup": []}
        for r in range(repeats):
            for k, (workload, text) in enumerate(prompts):
                order = [("plain", False), ("lookup", True)]
                if (r + k) % 2:
                    order.reverse()
                for name, on in order:
                    rate, ids = await timed(on, text)
                    rates[workload][name].append(rate)
                    if r == 0:
                        replies[name].append(ids)
        # Plain decoding's own variation: each prompt decoded beside three others.
        batched = 0
        texts = [t for _, t in prompts]
        for k, text in enumerate(texts):
            group = [text] + [texts[(k + d) % len(texts)] for d in (1, 2, 3)]
            results = await asyncio.gather(*(timed(False, t) for t in group))
            batched += results[0][1] != replies["plain"][k]
        stats = engine.lookup_stats
        await engine.aclose()
        out: dict[str, Any] = {
            "engine": engine.name, "model": p.served_name, "draft_tokens": draft_tokens,
            "max_tokens": gen_tokens, "repeats": repeats}
        for workload, by in rates.items():
            a, b = statistics.median(by["plain"]), statistics.median(by["lookup"])
            out[workload] = {"replies": sum(w == workload for w, _ in prompts),
                             "plain_tokens_per_s": round(a, 2),
                             "lookup_tokens_per_s": round(b, 2),
                             "lookup_over_plain": round(b / a, 3)}
        out["acceptance_rate"] = round(stats.accepted / stats.drafted, 3) \
            if stats.drafted else None
        out["drafted_tokens"], out["accepted_tokens"] = stats.drafted, stats.accepted
        out["replies_identical_with_lookup"] = sum(
            a == b for a, b in zip(replies["plain"], replies["lookup"], strict=True))
        out["replies_identical_beside_3_others"] = len(texts) - batched
        out["replies"] = len(texts)
        out["helps_extractive"] = out["extractive"]["lookup_over_plain"] > 1.0
        return out

    return asyncio.run(go())
