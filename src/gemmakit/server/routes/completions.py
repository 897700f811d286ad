"""POST /v1/completions (raw text completion: no turn format): parse -> pipeline -> encode.

With `echo` the prompt comes back before the completion; with `echo` and `logprobs`, every prompt
token is scored in the prompt's own forward pass (`prompt_logprobs`), and `max_tokens` 0 scores
without generating: what evaluation harnesses send for log-likelihoods."""

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
from gemmakit.types import TokenLogprob

router = APIRouter()


@router.post("/v1/completions", openapi_extra=PIPELINE_ROUTE_MARK)
async def completions(body: CompletionRequest, request: Request) -> Any:
    run = await begin(request, body.model, body.keep_alive)
    body.check_supported()
    prompts = body.prompts()
    await run.complete(CompletionJob(prompts, body.sampling(), grammar=body.grammar))
    echo = _Echo(run, body, prompts) if body.echo else None
    cid, created = new_id("cmpl"), now()
    if body.stream:
        return sse_response(run.decorate_events(_events(run, body, echo, cid, created)),
                            run.caller.request_id)
    choices = []
    for r in await run.collect():
        text, lp = r.text, None
        if echo is not None:
            text = echo.text(r.index) + text
        if body.logprobs is not None:
            lp = echo.logprobs(r.index, r.prompt_logprobs, r.logprobs) if echo is not None \
                else completion_logprobs(r.logprobs)
        choice: dict[str, Any] = {"index": r.index, "text": text, "logprobs": lp,
                                  "finish_reason": r.finish_reason}
        if body.return_token_ids:
            choice["token_ids"] = r.token_ids
        choices.append(choice)
    return run.decorate({
        "id": cid, "object": "text_completion", "created": created, "model": run.model_name,
        "choices": choices, "usage": usage_dict(run.usage),
    })


class _Echo:
    """The echoed prompt of each choice: its text (a text prompt as sent, a token-id prompt
    detokenized) and, when scored, its tokens' logprobs ahead of the completion's."""

    def __init__(self, run: Run, body: CompletionRequest, prompts: list[str | list[int]]) -> None:
        assert run.prepared is not None
        self.engine = run.pipeline.engine
        self.n = body.n
        self.prompts = prompts
        self.ids = run.prepared.prompt_token_lists

    def text(self, index: int) -> str:
        p = self.prompts[index // self.n]
        return p if isinstance(p, str) else self.engine.detokenize(p)

    def logprobs(self, index: int, prompt: list[TokenLogprob] | None,
                 completion: list[TokenLogprob]) -> dict[str, Any]:
        first = self.engine.detokenize(self.ids[index // self.n][:1])
        return completion_logprobs([*(prompt or []), *completion], first=first)


async def _events(run: Run, body: CompletionRequest, echo: _Echo | None, cid: str,
                  created: int) -> AsyncIterator[dict[str, Any]]:
    want_logprobs = body.logprobs is not None
    n = len(run.prepared.requests) if run.prepared is not None else 0
    offsets = [0] * n
    started = [False] * n
    async for d in run.stream():
        text, lp = d.text, None
        if echo is not None and not started[d.index]:
            started[d.index] = True
            text = echo.text(d.index) + text
            if want_logprobs:
                lp = echo.logprobs(d.index, d.prompt_logprobs, d.logprobs)
        elif want_logprobs:
            lp = completion_logprobs(d.logprobs, offsets[d.index])
        if not (text or d.finish_reason or lp and lp["tokens"]
                or body.return_token_ids and d.token_ids):
            continue
        if lp is not None:
            offsets[d.index] = lp["text_offset"][-1] + len(lp["tokens"][-1]) if lp["tokens"] \
                else offsets[d.index]
        choice: dict[str, Any] = {"index": d.index, "text": text, "logprobs": lp,
                                  "finish_reason": d.finish_reason}
        if body.return_token_ids:
            choice["token_ids"] = d.token_ids
        out = {"id": cid, "object": "text_completion", "created": created,
               "model": run.model_name, "choices": [choice]}
        if body.include_usage:
            out["usage"] = None
        yield out
    if body.include_usage:
        yield {"id": cid, "object": "text_completion", "created": created,
               "model": run.model_name, "choices": [], "usage": usage_dict(run.usage)}
