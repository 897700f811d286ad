"""Pieces the OpenAI route families share: model checks, logprob and usage encoding."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response

from gemmakit.errors import ModelNotFoundError, ServiceUnavailableError
from gemmakit.service import Service, Usage
from gemmakit.types import TokenLogprob


def service_for(request: Request, model: str) -> Service:
    """The loaded service for `model`; 503 while loading, 404 for another model."""
    runtime = request.app.state.runtime
    if runtime.draining:
        raise ServiceUnavailableError("The server is shutting down; retry on another replica.",
                                      headers={"Retry-After": "5"})
    if model != runtime.model_name:
        raise ModelNotFoundError(f"The model '{model}' does not exist; this server serves "
                                 f"'{runtime.model_name}'.", param="model")
    if runtime.service is None:
        raise ServiceUnavailableError("The model is still loading; retry shortly."
                                      if runtime.load_error is None else
                                      "The model failed to load; see the server log.",
                                      headers={"Retry-After": "1"})
    return runtime.service


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage_dict(u: Usage) -> dict[str, int]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [
        {"token": e.token, "logprob": e.logprob, "bytes": e.bytes,
         "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes}
                          for t in e.top]}
        for e in entries]}


def completion_logprobs(entries: list[TokenLogprob], text_offset: int = 0) -> dict[str, Any]:
    offsets, pos = [], text_offset
    for e in entries:
        offsets.append(pos)
        pos += len(e.token)
    return {"tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
            "text_offset": offsets}


T = TypeVar("T")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | Response:
    """Await `work` (a non-streaming generation) but cancel it as soon as the client hangs up,
    so its sequence leaves the batch instead of generating for nobody."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.create_task(disconnected())
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task in done:
        return task.result()
    task.cancel()
    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
