"""`gemmakit bench --prefix-reuse`: time to first token of each turn of a multi-turn chat with a
long system prompt, with the prefix cache on and off, in the same engine, turn by turn in turns
(cache on, cache off, …) so machine drift hits both alike."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from gemmakit.bench.measure import _FILLER

_QUESTIONS = ["What is the first step?", "And after that?", "Why does it matter?",
              "Give an example.", "Summarise it.", "What would you change?"]


def run_prefix(cfg: dict[str, Any], turns: int = 6, reply_tokens: int = 32) -> dict[str, Any]:
    from gemmakit.engines.llamacpp import LlamaCppEngine
    from gemmakit.service import Service
    from gemmakit.types import Message, SamplingParams

    eng = LlamaCppEngine(cfg["path"], context_length=cfg["context_length"],
                         threads=cfg["threads"], parallel=1)
    service = Service(eng, "bench")
    system = "You are a patient teacher. " + _FILLER * 4
    sp = SamplingParams(temperature=0, max_tokens=reply_tokens, ignore_eos=True)

    async def turn_ttft(history: list[Message], cache: bool
                        ) -> tuple[float | None, int, str, int]:
        eng.prefix_cache = cache
        prepared = service.prepare_chat(history, sp, "bench")
        t0 = time.perf_counter()
        first, text, stats = None, "", None
        async for _, chunk in service.stream(prepared):
            if first is None:
                first = time.perf_counter() - t0
            text += chunk.text
            stats = chunk.stats or stats
        return first, prepared.prompt_tokens, text, stats.cached_prompt_tokens if stats else 0

    async def go() -> list[dict[str, Any]]:
        rows = []
        history = [Message("system", system)]
        await turn_ttft([*history, Message("user", "Warm up.")], False)
        for k in range(turns):
            history.append(Message("user", _QUESTIONS[k % len(_QUESTIONS)]))
            off, n_prompt, _, _ = await turn_ttft(history, False)
            # The cached run must follow a run of the previous turn's conversation: replay it.
            if k:
                await turn_ttft(history[:-2], True)
            on, _, reply, cached = await turn_ttft(history, True)
            assert off is not None and on is not None  # every turn streams tokens
            rows.append({"turn": k + 1, "prompt_tokens": n_prompt, "cached_tokens": cached,
                         "ttft_cache_off_s": round(off, 4), "ttft_cache_on_s": round(on, 4),
                         "speedup": round(off / on, 2)})
            history.append(Message("assistant", reply))
        await eng.aclose()
        return rows

    rows = asyncio.run(go())
    later = [r["speedup"] for r in rows[1:]]
    return {"turns": rows, "median_speedup_after_turn_1": statistics.median(later) if later
            else None}
