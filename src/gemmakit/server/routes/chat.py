"""POST /v1/chat/completions"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from gemmakit.media.urls import inline_image_urls
from gemmakit.server.protocol import ChatCompletionRequest
from gemmakit.server.routes.common import (
    chat_logprobs,
    new_id,
    now,
    service_for,
    usage_dict,
)
from gemmakit.server.streaming import sse_response
from gemmakit.service import Prepared, Service, Usage

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    service = service_for(request, body.model)
    body.check_supported()
    rid = request.state.request_id
    await inline_image_urls(body.messages, request.app.state.settings)
    prepared = service.prepare_chat(body.to_messages(), body.sampling(), rid)
    cid, created = new_id("chatcmpl"), now()
    if body.stream:
        return sse_response(_events(service, prepared, body, cid, created), rid)
    results, usage = await service.collect(prepared)
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": service.model_name,
        "choices": [{
            "index": r.index,
            "message": {"role": "assistant", "content": r.text},
            "logprobs": chat_logprobs(r.logprobs) if body.logprobs else None,
            "finish_reason": r.finish_reason,
        } for r in results],
        "usage": usage_dict(usage),
    }


async def _events(service: Service, prepared: Prepared, body: ChatCompletionRequest, cid: str,
                  created: int) -> AsyncIterator[dict[str, Any]]:
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
    async for i, chunk in service.stream(prepared):
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
