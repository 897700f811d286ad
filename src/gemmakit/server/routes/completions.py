"""POST /v1/completions (raw text completion: no turn format): parse -> pipeline -> encode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from gemmakit.pipeline import CompletionJob, Run
from gemmakit.server.protocol import CompletionRequest
from gemmakit.server.routes.common import (
    PIPELINE_ROUTE_MARK,
    begin,
    completion_logprobs,
    new_id,
    now,
    usage_dict,
)
from gemmakit.server.streaming import sse_response

router = APIRouter()


@router.post("/v1/completions", openapi_extra=PIPELINE_ROUTE_MARK)
async def completions(body: CompletionRequest, request: Request) -> Any:
    run = await begin(request, body.model, body.keep_alive)
    body.check_supported()
    await run.complete(CompletionJob(body.prompts(), body.sampling()))
    cid, created = new_id("cmpl"), now()
    if body.stream:
        return sse_response(run.decorate_events(_events(run, body, cid, created)),
                            run.caller.request_id)
    return run.decorate({
        "id": cid, "object": "text_completion", "created": created, "model": run.model_name,
        "choices": [{
            "index": r.index,
            "text": r.text,
            "logprobs": completion_logprobs(r.logprobs) if body.logprobs is not None else None,
            "finish_reason": r.finish_reason,
        } for r in await run.collect()],
        "usage": usage_dict(run.usage),
    })


async def _events(run: Run, body: CompletionRequest, cid: str, created: int
                  ) -> AsyncIterator[dict[str, Any]]:
    want_logprobs = body.logprobs is not None
    offsets = [0] * (len(run.prepared.requests) if run.prepared is not None else 0)
    async for d in run.stream():
        if not (d.text or d.finish_reason or (want_logprobs and d.logprobs)):
            continue
        lp = completion_logprobs(d.logprobs, offsets[d.index]) if want_logprobs else None
        offsets[d.index] += sum(len(e.token) for e in d.logprobs)
        out = {"id": cid, "object": "text_completion", "created": created,
               "model": run.model_name,
               "choices": [{"index": d.index, "text": d.text, "logprobs": lp,
                            "finish_reason": d.finish_reason}]}
        if body.include_usage:
            out["usage"] = None
        yield out
    if body.include_usage:
        yield {"id": cid, "object": "text_completion", "created": created,
               "model": run.model_name, "choices": [], "usage": usage_dict(run.usage)}
