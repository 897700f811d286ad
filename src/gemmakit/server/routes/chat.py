"""POST /v1/chat/completions"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from gemmakit.errors import InvalidRequestError
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
from gemmakit.tools.chat import ToolPlan, ToolStream
from gemmakit.types import Chunk

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    service = service_for(request, body.model)
    body.check_supported()
    rid = request.state.request_id
    plan = tool_plan(body, service)
    sampling = body.sampling()
    if plan.constraint is not None and sampling.ignore_eos:
        raise InvalidRequestError("ignore_eos cannot be used with a constrained reply (the "
                                  "grammar ends it).", param="ignore_eos")
    guard = request_guard(request)  # validation, input policy, TPM reservation, output policy
    messages = await guard.chat_input(body, service)
    prepared = service.prepare_chat(messages, sampling, rid, tools=plan.declarations,
                                    constraint=plan.constraint)
    streams = await guard.admit(prepared, service)  # 429/503 come before any response
    cid, created = new_id("chatcmpl"), now()
    if body.stream:
        return sse_response(guard.decorate_events(
            _events(service, prepared, streams, body, cid, created, plan)), rid)
    outcome = await unless_disconnected(request, service.collect(prepared, streams))
    if not isinstance(outcome, tuple):
        return outcome
    results, usage = outcome
    choices = []
    for r in results:
        out = plan.finish(r.text, r.finish_reason)
        message: dict[str, Any] = {"role": "assistant", "content": out.content}
        if out.tool_calls:
            message["tool_calls"] = out.tool_calls
        choices.append({"index": r.index, "message": message,
                        "logprobs": chat_logprobs(r.logprobs) if body.logprobs else None,
                        "finish_reason": out.finish_reason})
    return guard.decorate({
        "id": cid, "object": "chat.completion", "created": created, "model": service.model_name,
        "choices": choices,
        "usage": usage_dict(usage),
    })


def tool_plan(body: ChatCompletionRequest, service: Service) -> ToolPlan:
    plan = ToolPlan.build(tools=body.tools, tool_choice=body.tool_choice,
                          parallel_tool_calls=body.parallel_tool_calls,
                          response_format=body.response_format,
                          parser=service.tool_parser)
    plan.check_engine(service.engine.capabilities, service.model_name)
    return plan


async def _events(service: Service, prepared: Prepared, streams: list[AsyncIterator[Chunk]],
                  body: ChatCompletionRequest, cid: str, created: int, plan: ToolPlan
                  ) -> AsyncIterator[dict[str, Any]]:
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
    tool_streams = [plan.streamer() for _ in range(n)] if plan.active else None
    async for i, chunk in service.stream(prepared, streams):
        completion_tokens += len(chunk.token_ids)
        if tool_streams is not None:
            for choice in tool_stream_choices(tool_streams[i], i, chunk, body.logprobs):
                yield frame([choice])
            continue
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


def tool_stream_choices(stream: ToolStream, i: int, chunk: Chunk,
                        logprobs: bool) -> list[dict[str, Any]]:
    """Stream choices for one chunk when tools are active: prose as it comes; at the end the rest
    of the prose, then each validated call (id and name first, then its arguments)."""
    def choice(delta: dict[str, Any], finish: str | None = None,
               lp: list | None = None) -> dict[str, Any]:
        return {"index": i, "delta": delta, "logprobs": chat_logprobs(lp or []) if logprobs
                else None, "finish_reason": finish}

    out = []
    text = stream.feed(chunk.text) if chunk.text else ""
    if text or (logprobs and chunk.logprobs):
        out.append(choice({"content": text} if text else {}, lp=chunk.logprobs))
    if chunk.finish_reason is None:
        return out
    rest, outcome = stream.finish(chunk.finish_reason)
    if rest:
        out.append(choice({"content": rest}))
    for k, call in enumerate(outcome.tool_calls):
        fn = call["function"]
        out.append(choice({"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                                           "function": {"name": fn["name"], "arguments": ""}}]}))
        out.append(choice({"tool_calls": [{"index": k,
                                           "function": {"arguments": fn["arguments"]}}]}))
    out.append(choice({}, outcome.finish_reason))
    return out
