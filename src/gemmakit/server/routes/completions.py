"""POST /v1/completions (raw text completion: no turn format)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from gemmakit.server.guard import request_guard
from gemmakit.server.protocol import CompletionRequest
from gemmakit.server.routes.common import (
    completion_logprobs,
    new_id,
    now,
    service_for,
    unless_disconnected,
    usage_dict,
)
from gemmakit.server.streaming import sse_response
from gemmakit.service import Prepared, Service, Usage
from gemmakit.types import Chunk

router = APIRouter()


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    service = service_for(request, body.model)
    body.check_supported()
    rid = request.state.request_id
    guard = request_guard(request)  # validation, input policy, TPM reservation, output policy
    prompts = await guard.completion_input(body, service)
    prepared = service.prepare_completion(prompts, body.sampling(), rid)
    streams = await guard.admit(prepared, service)  # 429/503 come before any response
    cid, created = new_id("cmpl"), now()
    if body.stream:
        return sse_response(guard.decorate_events(
            _events(service, prepared, streams, body, cid, created)), rid)
    outcome = await unless_disconnected(request, service.collect(prepared, streams))
    if not isinstance(outcome, tuple):
        return outcome
    results, usage = outcome
    return guard.decorate({
        "id": cid, "object": "text_completion", "created": created, "model": service.model_name,
        "choices": [{
            "index": r.index,
            "text": r.text,
            "logprobs": completion_logprobs(r.logprobs) if body.logprobs is not None else None,
            "finish_reason": r.finish_reason,
        } for r in results],
        "usage": usage_dict(usage),
    })


async def _events(service: Service, prepared: Prepared, streams: list[AsyncIterator[Chunk]],
                  body: CompletionRequest, cid: str, created: int) -> AsyncIterator[dict[str, Any]]:
    want_logprobs = body.logprobs is not None
    offsets = [0] * len(prepared.requests)
    completion_tokens = 0
    async for i, chunk in service.stream(prepared, streams):
        completion_tokens += len(chunk.token_ids)
        if not (chunk.text or chunk.finish_reason or (want_logprobs and chunk.logprobs)):
            continue
        lp = completion_logprobs(chunk.logprobs, offsets[i]) if want_logprobs else None
        offsets[i] += sum(len(e.token) for e in chunk.logprobs)
        out = {"id": cid, "object": "text_completion", "created": created,
               "model": service.model_name,
               "choices": [{"index": i, "text": chunk.text, "logprobs": lp,
                            "finish_reason": chunk.finish_reason}]}
        if body.include_usage:
            out["usage"] = None
        yield out
    if body.include_usage:
        yield {"id": cid, "object": "text_completion", "created": created,
               "model": service.model_name, "choices": [],
               "usage": usage_dict(Usage(prepared.prompt_tokens, completion_tokens))}
