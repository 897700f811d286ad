"""`gemmakit bench --constrained`: what a token under a JSON-schema grammar costs against a free
one, in the same engine, greedy, taking turns (free, constrained, free, …) so drift in the
machine's speed hits both alike.

Constrained: a structured answer (`response_format` json_schema, the budgeted grammar the server
builds) to a prompt asking for a long text field; free: the same prompt with the same number of
tokens, end-of-generation ignored. Per-token cost = (last token time - first token time) /
(tokens - 1); the ratio is the median of the per-round paired ratios.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string"}, "story": {"type": "string"},
    "characters": {"type": "array", "items": {"type": "string"}}},
    "required": ["title", "story", "characters"]}
PROMPT = ("Write a long adventure story about a lighthouse keeper and a storm, as JSON with a "
          "title, the story and its characters.")


def run_constrained(settings: Any, gen_tokens: int, repeats: int) -> dict[str, Any]:
    from gemmakit.compose import plan
    from gemmakit.tools.chat import ToolPlan
    from gemmakit.types import GenerationRequest, Message, SamplingParams

    p = plan(settings, progress=False)
    engine = p.load_engine()
    pipeline = p.pipeline(engine)
    service = pipeline.service
    tool_plan = ToolPlan.build(response_format={"type": "json_schema", "json_schema": {
        "name": "story", "schema": SCHEMA}}, max_tokens=gen_tokens,
        tokenizer=pipeline.grammar_tokenizer)
    _, ids, _ = service.chat_prompt([Message("user", PROMPT)])

    async def timed(sp: SamplingParams, constraint: Any) -> tuple[float, int]:
        req = GenerationRequest(prompt_tokens=ids, sampling=sp, request_id="bench",
                                stop_token_ids=service._chat_stop_ids, constraint=constraint)
        times = []
        async for chunk in engine.stream(req):
            times += [time.perf_counter()] * len(chunk.token_ids)
        return (times[-1] - times[0]) / (len(times) - 1), len(times)

    async def go() -> dict[str, Any]:
        free, constrained, ratios, lengths = [], [], [], []
        for k in range(repeats + 1):  # round 0 warms up
            c, n = await timed(SamplingParams(temperature=0, max_tokens=gen_tokens),
                               tool_plan.constraint)
            f, _ = await timed(SamplingParams(temperature=0, max_tokens=n, ignore_eos=True),
                               None)
            if k:
                free.append(f)
                constrained.append(c)
                ratios.append(c / f)
                lengths.append(n)
        await engine.aclose()
        ratio = statistics.median(ratios)
        return {
            "engine": engine.name, "model": p.served_name, "max_tokens": gen_tokens,
            "repeats": repeats, "constrained_tokens": lengths,
            "free_ms_per_token": round(1000 * statistics.median(free), 3),
            "constrained_ms_per_token": round(1000 * statistics.median(constrained), 3),
            "constrained_over_free": round(ratio, 3),
            "target_constrained_over_free_le_1.25": ratio <= 1.25,
        }

    return asyncio.run(go())
