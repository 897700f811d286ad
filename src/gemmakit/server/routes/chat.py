"""POST /v1/chat/completions: parse -> pipeline -> encode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from gemmakit.pipeline import ChatJob, Delta, Run
from gemmakit.safety.media import resolve_url
from gemmakit.server.protocol import ChatCompletionRequest
from gemmakit.server.routes.common import (
    PIPELINE_ROUTE_MARK,
    begin,
    chat_logprobs,
    new_id,
    now,
    usage_dict,
)
from gemmakit.server.streaming import sse_response
from gemmakit.types import Message

router = APIRouter()


@router.post("/v1/chat/completions", openapi_extra=PIPELINE_ROUTE_MARK)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    run = await begin(request, body.model, body.keep_alive)
    body.check_supported()
    await run.chat(ChatJob(await messages_of(body, request), body.sampling(),
                           **body.tool_fields()))
    cid, created = new_id("chatcmpl"), now()
    if body.stream:
        return sse_response(run.decorate_events(_events(run, body, cid, created)),
                            run.caller.request_id)
    choices = []
    for r in await run.collect():
        message: dict[str, Any] = {"role": "assistant", "content": r.content}
        if r.tool_calls:
            message["tool_calls"] = r.tool_calls
        choice = {"index": r.index, "message": message,
                  "logprobs": chat_logprobs(r.logprobs) if body.logprobs else None,
                  "finish_reason": r.finish_reason}
        if r.schema_error is not None:
            choice["schema_error"] = r.schema_error
        choices.append(choice)
    return run.decorate({
        "id": cid, "object": "chat.completion", "created": created, "model": run.model_name,
        "choices": choices, "usage": usage_dict(run.usage),
    })


async def messages_of(body: ChatCompletionRequest, request: Request) -> list[Message]:
    """The request's messages as core types: non-data image URLs are resolved first under the
    server's media policy (file:// only under --media-dir, http(s) only when allowed)."""
    media = request.app.state.safety.media
    for i, m in enumerate(body.messages):
        for j, part in enumerate(m.content if isinstance(m.content, list) else ()):
            if part.type == "image_url":
                part.image_url.url = await resolve_url(
                    part.image_url.url, media, f"messages[{i}].content[{j}].image_url.url")
    return body.to_messages()


async def _events(run: Run, body: ChatCompletionRequest, cid: str, created: int
                  ) -> AsyncIterator[dict[str, Any]]:
    def frame(choices: list[dict[str, Any]], usage: dict[str, int] | None = None
              ) -> dict[str, Any]:
        out = {"id": cid, "object": "chat.completion.chunk", "created": created,
               "model": run.model_name, "choices": choices}
        if body.include_usage:
            out["usage"] = usage
        return out

    n = len(run.prepared.requests) if run.prepared is not None else 0
    for i in range(n):
        yield frame([{"index": i, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}])
    async for d in run.stream():
        for choice in delta_choices(d, body.logprobs, run.plan.active):
            yield frame([choice])
    if body.include_usage:
        yield frame([], usage_dict(run.usage))


def delta_choices(d: Delta, logprobs: bool, tools: bool) -> list[dict[str, Any]]:
    """The stream choices for one delta. Without tools: one, unless it holds nothing to send yet
    (bytes of a character still incomplete). With tools: prose as it comes; at the end the rest
    of the prose, then each validated call (id and name first, then its arguments), then the
    finish reason. The choice with the finish reason carries `schema_error` when the check
    after generation failed (gemmakit's extension, as on a non-streamed choice)."""
    def choice(delta: dict[str, Any], finish: str | None = None,
               lp: list | None = None) -> dict[str, Any]:
        out = {"index": d.index, "delta": delta,
               "logprobs": chat_logprobs(lp or []) if logprobs else None,
               "finish_reason": finish}
        if finish is not None and d.schema_error is not None:
            out["schema_error"] = d.schema_error
        return out

    if not tools:
        if not (d.text or d.finish_reason or (logprobs and d.logprobs)):
            return []
        return [choice({"content": d.text} if d.text else {}, d.finish_reason, d.logprobs)]
    out = []
    if d.text or (logprobs and d.logprobs):
        out.append(choice({"content": d.text} if d.text else {}, lp=d.logprobs))
    if d.finish_reason is None:
        return out
    for k, call in enumerate(d.tool_calls):
        fn = call["function"]
        out.append(choice({"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                                           "function": {"name": fn["name"], "arguments": ""}}]}))
        out.append(choice({"tool_calls": [{"index": k,
                                           "function": {"arguments": fn["arguments"]}}]}))
    out.append(choice({}, d.finish_reason))
    return out
