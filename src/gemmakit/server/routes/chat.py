"""POST /v1/chat/completions"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from gemmakit.server.guard import request_guard
from gemmakit.server.protocol import ChatCompletionRequest
from gemmakit.server.routes.common import (
    chat_logprobs,
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


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    service = service_for(request, body.model)
    body.check_supported()
    rid = request.state.request_id
    guard = request_guard(request)  # validation, input policy, TPM reservation, output policy
    messages = await guard.chat_input(body, service)
    prepared = service.prepare_chat(messages, body.sampling(), rid)
    streams = await guard.admit(prepared, service)  # 429/503 come before any response
    cid, created = new_id("chatcmpl"), now()
    if body.stream:
        return sse_response(guard.decorate_events(
            _events(service, prepared, streams, body, cid, created)), rid)
    outcome = await unless_disconnected(request, service.collect(prepared, streams))
    if not isinstance(outcome, tuple):
        return outcome
    results, usage = outcome
    return guard.decorate({
        "id": cid, "object": "chat.completion", "created": created, "model": service.model_name,
        "choices": [{
            "index": r.index,
            "message": {"role": "assistant", "content": r.text},
            "logprobs": chat_logprobs(r.logprobs) if body.logprobs else None,
            "finish_reason": r.finish_reason,
        } for r in results],
        "usage": usage_dict(usage),
    })


async def _events(service: Service, prepared: Prepared, streams: list[AsyncIterator[Chunk]],
                  body: ChatCompletionRequest, cid: str, created: int) -> AsyncIterator[dict[str, Any]]:
    def frame(choices: list[dict[str, Any]], usage: dict[str, int] | None = None
              ) -> dict[str, Any]:
        out = {"id": cid, "object": "chat.completion.chunk", "created": created,
               "model": service.model_name, "choices": choices}
        if body.include_usage:
            out["usage"] = usage
        return out

    n = len(prepared.requests)
    for i in range(n):
        yield frame([{"index": i, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}])
    completion_tokens = 0
    async for i, chunk in service.stream(prepared, streams):
        completion_tokens += len(chunk.token_ids)
        if not (chunk.text or chunk.finish_reason or (body.logprobs and chunk.logprobs)):
            continue  # bytes of a character still incomplete: nothing to send yet
        yield frame([{
            "index": i,
            "delta": {"content": chunk.text} if chunk.text else {},
            "logprobs": chat_logprobs(chunk.logprobs) if body.logprobs else None,
            "finish_reason": chunk.finish_reason,
        }])
    if body.include_usage:
        yield frame([], usage_dict(Usage(prepared.prompt_tokens, completion_tokens)))
