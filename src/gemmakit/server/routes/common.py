"""Pieces the OpenAI route families share: the start of a pipeline run, logprob and usage
encoding.

A generation route is declared with `openapi_extra=PIPELINE_ROUTE_MARK` and starts its work with
`begin(request, model)`: the route contract test (tests/unit/server/test_route_contract.py)
enumerates the marked routes and proves each one validates, polices, accounts, reports metrics
and cancels on disconnect through the pipeline — and fails for any POST /v1 route that is not
marked."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import Request

from gemmakit.errors import ModelNotFoundError, ServiceUnavailableError
from gemmakit.pipeline import Caller, Pipeline, Run
from gemmakit.server.models_registry import keep_alive_param
from gemmakit.service import Usage
from gemmakit.types import TokenLogprob

PIPELINE_ROUTE = "x-gemmakit-pipeline"
PIPELINE_ROUTE_MARK = {PIPELINE_ROUTE: True}


async def begin(request: Request, model: str, keep_alive: Any = None) -> Run:
    """A pipeline run for this request to `model`: 503 while loading or draining, 404 for a
    model this server does not serve, 403 for one the caller's key may not use, 400 for a bad
    `keep_alive`. A model not loaded is loaded first (the request waits). The edge
    (server/guard.py) books the run if the route leaves it unfinished."""
    pipeline = await pipeline_for(request, model, keep_alive)
    state = request.scope["state"]

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    caller = Caller(request_id=state["request_id"], endpoint=request.url.path,
                    method=request.method, key=state.get("key"),
                    t0=state.get("t0", time.perf_counter()), disconnected=disconnected)
    run = pipeline.begin(caller)
    state["run"] = run
    return run


async def pipeline_for(request: Request, model: str, keep_alive: Any = None) -> Pipeline:
    """The pipeline of `model`, loaded for this request if it is not (server/models_registry.py);
    404 for a model not served, 503 while loading at start-up, draining, or without room. The
    model counts as in use until the response has been sent (server/app.py's RequestContext
    releases it), then stays loaded for the request's `keep_alive` (Ollama's: "5m", seconds,
    0, negative for ever), else the server's --keep-alive."""
    registry = request.app.state.runtime
    explicit = keep_alive is not None
    keep = keep_alive_param(keep_alive) if explicit else None
    if registry.draining:
        raise ServiceUnavailableError("The server is shutting down; retry on another replica.",
                                      headers={"Retry-After": "5"})
    entry = registry.get(model)
    if entry is None and registry.adapters is not None:
        served = await registry.adapters.acquire(model)  # an adapter: its base's entry
        if served is not None:
            base, adapter_pipeline = served
            request.scope["state"].setdefault("releases", []).append(
                lambda: registry.release(base, keep, explicit=explicit))
            return adapter_pipeline
        error = await registry.adapters.not_served(model)
        if error is not None:
            raise error
    if entry is None:
        if len(registry.names) == 1:
            raise ModelNotFoundError(f"The model '{model}' does not exist; this server serves "
                                     f"'{registry.model_name}'.", param="model")
        raise registry.unknown(model)
    if registry.starting and entry.state == "loading":
        # While the start-up loads run, a request does not wait (as a single-model server
        # answers while its model loads).
        raise ServiceUnavailableError("The model is still loading; retry shortly.",
                                      headers={"Retry-After": "1"})
    entry = await registry.acquire(model)
    request.scope["state"].setdefault("releases", []).append(
        lambda: registry.release(entry, keep, explicit=explicit))
    pipeline: Pipeline = entry.pipeline
    return pipeline


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


def completion_logprobs(entries: list[TokenLogprob], text_offset: int = 0,
                        first: str | None = None) -> dict[str, Any]:
    """The legacy logprobs object. `first`: the text of a scored prompt's first token, which
    leads the list with null logprobs (nothing before it predicts it)."""
    offsets, pos = [], text_offset
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top: list[dict[str, float] | None] = []
    if first is not None:
        tokens.append(first)
        token_logprobs.append(None)
        top.append(None)
        offsets.append(pos)
        pos += len(first)
    for e in entries:
        offsets.append(pos)
        pos += len(e.token)
    tokens += [e.token for e in entries]
    token_logprobs += [e.logprob for e in entries]
    top += [{t.token: t.logprob for t in e.top} for e in entries]
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
            "text_offset": offsets}
