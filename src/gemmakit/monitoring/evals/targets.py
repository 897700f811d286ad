"""What an eval runs against: the local engine in-process, or any OpenAI-compatible server.

Both stream, so time to first token is measured the same way: from sending the request to the
first piece of text.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from gemmakit.errors import EngineError, InvalidRequestError, ServiceUnavailableError
from gemmakit.monitoring.evals.suite import EvalItem
from gemmakit.pipeline import Caller, ChatJob, CompletionJob, Pipeline, Run
from gemmakit.types import Message, SamplingParams

_FORCE_BIAS = 1000.0  # logit bias that makes greedy sampling pick the reference token


@dataclass
class Generation:
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    ttft_s: float | None = None
    logprobs: list[float] = field(default_factory=list)  # natural log, per generated token


class Target(Protocol):
    name: str

    async def generate(self, item: EvalItem, logprobs: bool) -> Generation: ...

    async def reference_logprobs(self, item: EvalItem) -> list[float] | None:
        """Log-probabilities of the reference's tokens given the prompt; None if unsupported."""
        ...

    async def aclose(self) -> None: ...


def _sampling(item: EvalItem, logprobs: bool) -> SamplingParams:
    return SamplingParams(max_tokens=item.max_tokens, temperature=item.temperature,
                          seed=item.seed, stop=item.stop, logprobs=logprobs)


class LocalTarget:
    """The in-process request pipeline: what the server runs, with no HTTP."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.name = f"local:{pipeline.model_name}"

    async def _open(self, item: EvalItem, sampling: SamplingParams) -> Run:
        run = self.pipeline.begin(Caller(f"eval-{uuid.uuid4().hex[:12]}", endpoint="eval"))
        if item.prompt is not None:
            await run.complete(CompletionJob([item.prompt], sampling))
        else:
            await run.chat(ChatJob([Message(m.role, m.content)  # type: ignore[arg-type]
                                    for m in item.messages or []], sampling))
        return run

    async def generate(self, item: EvalItem, logprobs: bool) -> Generation:
        g = Generation()
        t0 = time.perf_counter()
        run = await self._open(item, _sampling(item, logprobs))
        async for d in run.stream():
            if d.text and g.ttft_s is None:
                g.ttft_s = time.perf_counter() - t0
            g.text += d.text
            g.logprobs += [e.logprob for e in d.logprobs]
            if d.finish_reason is not None:
                g.finish_reason = d.finish_reason
        g.prompt_tokens, g.completion_tokens = run.usage.prompt_tokens, run.usage.completion_tokens
        g.latency_s = time.perf_counter() - t0
        return g

    async def reference_logprobs(self, item: EvalItem) -> list[float] | None:
        """Teacher forcing through the pipeline: for each reference token, one step with the
        prompt plus the reference so far (as token ids), that token forced by a logit bias; the
        engine reports the raw model log-probability (before the bias) of the token it sampled."""
        if item.reference is None:
            return None
        service = self.pipeline.service
        sp = SamplingParams(max_tokens=1)
        prompt_ids = (service.prepare_completion([item.prompt], sp, "eval") if item.prompt
                      is not None else service.prepare_chat(
                          [Message(m.role, m.content)  # type: ignore[arg-type]
                           for m in item.messages or []], sp, "eval")).prompt_token_lists[0]
        ref_ids = service.engine.tokenize(item.reference)
        out: list[float] = []
        for k, tok in enumerate(ref_ids):
            ids = prompt_ids + ref_ids[:k]
            if len(ids) + 1 > service.engine.context_length:
                break
            sp = SamplingParams(max_tokens=1, temperature=0.0, logprobs=True,
                                logit_bias={tok: _FORCE_BIAS}, ignore_eos=True)
            run = self.pipeline.begin(Caller(f"eval-ppl-{uuid.uuid4().hex[:8]}",
                                             endpoint="eval"))
            await run.complete(CompletionJob([ids], sp))
            (result,) = await run.collect()
            if result.token_ids[:1] != [tok] or not result.logprobs:
                raise EngineError("the engine did not score the forced reference token")
            out.append(result.logprobs[0].logprob)
        return out

    async def aclose(self) -> None:
        await self.pipeline.aclose()


class HttpTarget:
    """Any OpenAI-compatible server (gemmakit, vLLM, llama-server, Ollama, …), streamed."""

    def __init__(self, base_url: str, model: str | None, api_key: str | None,
                 timeout: float = 300.0) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(headers=headers, timeout=timeout)
        self.model = model
        self.name = self.base_url

    async def _model(self) -> str:
        if self.model is None:
            r = await self.client.get(f"{self.base_url}/models")
            r.raise_for_status()
            self.model = r.json()["data"][0]["id"]
        return self.model

    async def generate(self, item: EvalItem, logprobs: bool) -> Generation:
        import httpx

        body: dict[str, Any] = {"model": await self._model(), "max_tokens": item.max_tokens,
                                "temperature": item.temperature, "stream": True,
                                "stream_options": {"include_usage": True}}
        if item.seed is not None:
            body["seed"] = item.seed
        if item.stop:
            body["stop"] = item.stop
        chat = item.messages is not None
        if chat:
            body["messages"] = [m.model_dump() for m in item.messages or []]
            if logprobs:
                body["logprobs"] = True
        else:
            body["prompt"] = item.prompt
            if logprobs:
                body["logprobs"] = 0
        url = f"{self.base_url}/{'chat/completions' if chat else 'completions'}"
        g = Generation()
        t0 = time.perf_counter()
        try:
            async with self.client.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    detail = (await r.aread()).decode("utf-8", "replace")[:300]
                    raise InvalidRequestError(f"HTTP {r.status_code}: {detail}")
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    self._event(json.loads(data), g, t0, chat)
        except httpx.HTTPError as e:
            raise ServiceUnavailableError(f"{url}: {type(e).__name__}") from None
        g.latency_s = time.perf_counter() - t0
        return g

    @staticmethod
    def _event(e: dict[str, Any], g: Generation, t0: float, chat: bool) -> None:
        if "error" in e:
            raise InvalidRequestError(f"stream error: {e['error'].get('message')}")
        if e.get("usage"):
            g.prompt_tokens = e["usage"]["prompt_tokens"]
            g.completion_tokens = e["usage"]["completion_tokens"]
        for c in e.get("choices") or []:
            piece = ((c.get("delta") or {}).get("content") if chat else c.get("text")) or ""
            if piece and g.ttft_s is None:
                g.ttft_s = time.perf_counter() - t0
            g.text += piece
            lp = c.get("logprobs")
            if lp:
                if chat:
                    g.logprobs += [t["logprob"] for t in lp.get("content") or []]
                else:
                    g.logprobs += [x for x in lp.get("token_logprobs") or [] if x is not None]
            if c.get("finish_reason"):
                g.finish_reason = c["finish_reason"]

    async def reference_logprobs(self, item: EvalItem) -> list[float] | None:
        return None  # the OpenAI API has no way to score given text (no `echo` on chat)

    async def aclose(self) -> None:
        await self.client.aclose()
