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
from gemmakit.service import Usage
from gemmakit.types import TokenLogprob

PIPELINE_ROUTE = "x-gemmakit-pipeline"
PIPELINE_ROUTE_MARK = {PIPELINE_ROUTE: True}


def begin(request: Request, model: str) -> Run:
    """A pipeline run for this request to `model`: 503 while loading or draining, 404 for a
    model this server does not serve, 403 for one the caller's key may not use. The edge
    (server/guard.py) books the run if the route leaves it unfinished."""
    pipeline = pipeline_for(request, model)
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


def pipeline_for(request: Request, model: str) -> Pipeline:
    """The loaded pipeline for `model`; 503 while loading, 404 for another model."""
    runtime = request.app.state.runtime
    if runtime.draining:
        raise ServiceUnavailableError("The server is shutting down; retry on another replica.",
                                      headers={"Retry-After": "5"})
    if model != runtime.model_name:
        raise ModelNotFoundError(f"The model '{model}' does not exist; this server serves "
                                 f"'{runtime.model_name}'.", param="model")
    if runtime.pipeline is None:
        raise ServiceUnavailableError("The model is still loading; retry shortly."
                                      if runtime.load_error is None else
                                      "The model failed to load; see the server log.",
                                      headers={"Retry-After": "1"})
    pipeline: Pipeline = runtime.pipeline
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


def completion_logprobs(entries: list[TokenLogprob], text_offset: int = 0) -> dict[str, Any]:
    offsets, pos = [], text_offset
    for e in entries:
        offsets.append(pos)
        pos += len(e.token)
    return {"tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
            "text_offset": offsets}
