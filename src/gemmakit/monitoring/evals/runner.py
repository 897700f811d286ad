"""Run a suite against a target and build the JSON report: per-item results, a performance
summary (latency and TTFT percentiles, tokens/s, success rate) and a quality summary (mean of each
scorer, pass rate of the checks, heuristics apart and labelled)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from gemmakit import __version__
from gemmakit.monitoring.evals import heuristics, scorers
from gemmakit.monitoring.evals.suite import EvalItem
from gemmakit.monitoring.evals.targets import Generation, Target
from gemmakit.monitoring.window import percentile

HEURISTICS_NOTE = ("heuristic word-level cues (relevance by word overlap, "
                   "coherence, safety keywords, factual-accuracy cues): compare runs of one suite "
                   "with them; they do not measure quality")


def score_item(item: EvalItem, g: Generation, ref_logprobs: list[float] | None
               ) -> dict[str, Any]:
    out = g.text
    s: dict[str, float | None] = {}
    if item.exact is not None:
        s["exact_match"] = scorers.exact_match(out, item.exact)
    if item.contains:
        s["contains"] = scorers.contains(out, item.contains)
    if item.regex is not None:
        s["regex"] = scorers.regex(out, item.regex)
    if item.json_valid:
        s["json_valid"] = scorers.json_valid(out)
    if item.json_schema is not None:
        s["json_schema"] = scorers.json_schema(out, item.json_schema)
    if item.reference is not None:
        s["rouge_l"] = scorers.rouge_l(out, item.reference)
        if ref_logprobs is not None:
            s["perplexity_reference"] = scorers.perplexity(ref_logprobs)
    if g.logprobs:
        s["perplexity_output"] = scorers.perplexity(g.logprobs)
    checks = [s[c] for c in item.checks]
    prompt_text = item.prompt if item.prompt is not None else " ".join(
        m.content for m in item.messages or [] if m.role == "user")
    decode_s = g.latency_s - (g.ttft_s or 0.0)
    return {
        "id": item.id, "ok": True, "output": out, "finish_reason": g.finish_reason,
        "passed": all(c == 1.0 for c in checks) if checks else None,
        "scores": s, "heuristics": heuristics.score_all(prompt_text, out),
        "latency_s": g.latency_s, "ttft_s": g.ttft_s,
        "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
        "tokens_per_s": (g.completion_tokens - 1) / decode_s
        if g.completion_tokens > 1 and decode_s > 0 else None,
        "tags": item.tags,
    }


async def run_suite(items: list[EvalItem], target: Target, *, logprobs: bool = True,
                    reference_perplexity: bool = True, concurrency: int = 1,
                    on_done: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    started = time.time()
    t0 = time.perf_counter()

    async def one(item: EvalItem) -> dict[str, Any]:
        async with sem:
            try:
                g = await target.generate(item, logprobs)
                ref = await target.reference_logprobs(item) if reference_perplexity else None
                result = score_item(item, g, ref)
            except Exception as e:  # one failing item is a result, not the end of the run
                result = {"id": item.id, "ok": False, "passed": False if item.checks else None,
                          "error": getattr(e, "message", None) or f"{type(e).__name__}: {e}",
                          "scores": {}, "heuristics": {}, "tags": item.tags}
        if on_done is not None:
            on_done(result)
        return result

    results = await asyncio.gather(*(one(i) for i in items))
    wall = time.perf_counter() - t0
    return {
        "gemmakit_version": __version__, "target": target.name, "started_at": started,
        "duration_s": wall, "items": results,
        "performance": performance_summary(results, wall),
        "quality": quality_summary(results),
    }


def performance_summary(results: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    ok = [r for r in results if r["ok"]]
    lat = [r["latency_s"] for r in ok]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    tps = [r["tokens_per_s"] for r in ok if r["tokens_per_s"] is not None]
    gen = sum(r["completion_tokens"] for r in ok)
    return {
        "requests": len(results), "succeeded": len(ok),
        "success_rate": len(ok) / len(results) if results else None,
        "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95),
        "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
        "tokens_per_s_avg": sum(tps) / len(tps) if tps else None,
        "prompt_tokens": sum(r["prompt_tokens"] for r in ok), "completion_tokens": gen,
        # generated tokens over the time spent generating (reference scoring excluded)
        "generation_tokens_per_s": gen / sum(lat) if sum(lat) > 0 else None,
        "wall_s": wall_s,
    }


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def quality_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    names = sorted({k for r in results for k in r["scores"]})
    per_scorer = {}
    for n in names:
        vals = [r["scores"][n] for r in results if r["scores"].get(n) is not None]
        per_scorer[n] = {"mean": _mean(vals), "n": len(vals)}
    judged = [r for r in results if r["passed"] is not None]
    hnames = sorted({k for r in results for k in r["heuristics"]})
    return {
        "pass_rate": sum(r["passed"] for r in judged) / len(judged) if judged else None,
        "passed": sum(r["passed"] for r in judged), "checked": len(judged),
        "scorers": per_scorer,
        "heuristics": {"note": HEURISTICS_NOTE, **{
            n: _mean([r["heuristics"][n] for r in results if n in r["heuristics"]])
            for n in hnames}},
    }
