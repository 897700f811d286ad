"""The service: one served model's rendering, tokenization and generation, below the request
pipeline (`gemmakit.pipeline`), which is what every caller goes through.

messages --prompts/gemma--> segments --engine.tokenize--> token ids --> one GenerationRequest per
choice --engine.submit--> (choice index, Chunk) events. Context limits are checked here, before
anything is queued: a prompt that does not fit is refused, never truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gemmakit.engines.base import Engine
from gemmakit.errors import ContextLengthExceededError, InvalidRequestError, UnsupportedError
from gemmakit.prompts import Prompt, render_chat, render_completion
from gemmakit.prompts.gemma import STOP_TOKENS
from gemmakit.types import (
    AudioPart,
    Chunk,
    ChunkStats,
    Constraint,
    FinishReason,
    GenerationRequest,
    ImagePart,
    Message,
    SamplingParams,
    TokenLogprob,
)


@dataclass
class Prepared:
    """A validated request, ready to run: one GenerationRequest per output choice."""

    requests: list[GenerationRequest]
    prompt_tokens: int  # summed over distinct prompts (OpenAI counts a prompt once for n choices)
    prompt_token_lists: list[list[int]] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    """Applied in order to each (choice index, chunk) (output policy, token accounting); a stage
    that sets finish_reason ends that choice."""


Stage = Callable[[int, Chunk], Awaitable[Chunk]]


@dataclass
class ChoiceResult:
    index: int
    text: str = ""
    """Everything the choice generated (after the output stages)."""
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    stats: ChunkStats | None = None
    content: str | None = None
    """The reply's content once its tool calls are parsed out (the pipeline fills it in)."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None
    """The scored prompt's logprobs (prompt tokens after the first), when asked for."""
    schema_error: str | None = None
    """Why the structured answer failed its schema check after generation, or why the calls
    the reply wrote were not returned as calls (the pipeline fills it in)."""

    def add(self, chunk: Chunk) -> None:
        """Append one of the choice's chunks."""
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs = chunk.prompt_logprobs
        self.text += chunk.text
        self.token_ids += chunk.token_ids
        self.logprobs += chunk.logprobs
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
            self.stats = chunk.stats


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Service:
    """Engine-agnostic request preparation and generation for one served model."""

    def __init__(self, engine: Engine, model_name: str, *, tool_parser: str = "json") -> None:
        self.engine = engine
        self.model_name = model_name
        self.tool_parser = tool_parser  # call syntax parsed from replies (gemmakit.tools.parsers)
        self.adapter: str | None = None  # the LoRA adapter every request it prepares uses
        self._chat_stop_ids = frozenset(self._special_id(t) for t in STOP_TOKENS)

    def for_adapter(self, name: str) -> Service:
        """This service serving the adapter `name` (the model name requests and usage see)."""
        import copy

        other = copy.copy(self)
        other.model_name = other.adapter = name
        return other

    def _special_id(self, token: str) -> int:
        ids = self.engine.tokenize(token, special=True)
        if len(ids) != 1:
            raise InvalidRequestError(f"the model's vocabulary has no '{token}' token")
        return ids[0]

    # --- preparation ----------------------------------------------------------------------
    def tokenize_prompt(self, prompt: Prompt) -> list[int]:
        ids: list[int] = []
        for seg in prompt.segments:
            ids.extend(self.engine.tokenize(seg.text, special=seg.special))
        return ids

    def _check_media(self, prompt: Prompt, messages: Sequence[Message]) -> None:
        caps = self.engine.capabilities
        for i, m in enumerate(messages):
            if not isinstance(m.content, list):
                continue
            for j, part in enumerate(m.content):
                if isinstance(part, ImagePart) and not caps.vision:
                    raise UnsupportedError(f"model '{self.model_name}' has no vision: it cannot "
                                           "take image input", param=f"messages[{i}].content[{j}]")
                if isinstance(part, AudioPart) and not caps.audio:
                    raise UnsupportedError(f"model '{self.model_name}' has no audio tower: it "
                                           "cannot take audio input",
                                           param=f"messages[{i}].content[{j}]")

    def _check_fits(self, n_prompt: int, sampling: SamplingParams, param: str) -> None:
        bad = [t for t in sampling.logit_bias if not 0 <= t < self.engine.n_vocab]
        if bad:
            raise InvalidRequestError(f"logit_bias names token id {bad[0]}, outside the "
                                      f"vocabulary (0 to {self.engine.n_vocab - 1}).",
                                      param="logit_bias")
        ctx = self.engine.context_length
        if n_prompt >= ctx or (sampling.max_tokens is not None
                               and n_prompt + sampling.max_tokens > ctx):
            raise ContextLengthExceededError(prompt_tokens=n_prompt,
                                             max_tokens=sampling.max_tokens,
                                             context_length=ctx, param=param)

    def _choices(self, prompt_ids: list[int], sampling: SamplingParams, request_id: str,
                 stop_ids: frozenset[int], first_index: int,
                 constraint: Constraint | None = None) -> list[GenerationRequest]:
        out = []
        for k in range(sampling.n):
            # With a seed, choice k uses seed + k: n identical samples would defeat n > 1.
            sp = sampling if sampling.seed is None or k == 0 else sampling.model_copy(
                update={"seed": sampling.seed + k})
            out.append(GenerationRequest(prompt_tokens=prompt_ids, sampling=sp,
                                         request_id=f"{request_id}-{first_index + k}",
                                         stop_token_ids=stop_ids, constraint=constraint,
                                         adapter=self.adapter))
        return out

    def chat_prompt(self, messages: Sequence[Message], *, tools: Sequence[dict[str, Any]] = (),
                    add_generation_prompt: bool = True
                    ) -> tuple[Prompt, list[int], list[object]]:
        """The rendered conversation, the token ids the engine prefills for it (media
        placeholders expanded to the engine's media tokens) and the engine's media features."""
        prompt = render_chat(messages, tools=tools, add_generation_prompt=add_generation_prompt)
        self._check_media(prompt, messages)
        if not prompt.media:
            return prompt, self.tokenize_prompt(prompt), []
        from gemmakit.media.prepare import media_params, tokenize_with_media

        ids, features = tokenize_with_media(self.engine, prompt, media_params(messages))
        return prompt, ids, features

    def prepare_chat(self, messages: Sequence[Message], sampling: SamplingParams,
                     request_id: str, *, tools: Sequence[dict[str, Any]] = (),
                     constraint: Constraint | None = None) -> Prepared:
        """`tools`: function declarations shown to the model; `constraint`: a grammar the
        engine enforces (built and checked by gemmakit.tools; see tools/chat.py)."""
        prompt, ids, features = self.chat_prompt(messages, tools=tools)
        self._check_fits(len(ids), sampling, "messages")
        reqs = self._choices(ids, sampling, request_id, self._chat_stop_ids, 0, constraint)
        for r in reqs:
            r.media, r.media_features = list(prompt.media), features
        return Prepared(reqs, len(ids), [ids])

    def prepare_completion(self, prompts: Sequence[str | list[int]], sampling: SamplingParams,
                           request_id: str, *, constraint: Constraint | None = None
                           ) -> Prepared:
        if not prompts:
            raise InvalidRequestError("'prompt' must not be empty.", param="prompt")
        reqs: list[GenerationRequest] = []
        lists = []
        for p in prompts:
            if isinstance(p, str):
                ids = self.tokenize_prompt(render_completion(p))
            else:
                ids = list(p)
                bad = [t for t in ids if not 0 <= t < self.engine.n_vocab]
                if bad:
                    raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary.",
                                              param="prompt")
                if not ids:
                    raise InvalidRequestError("'prompt' must not be empty.", param="prompt")
            self._check_fits(len(ids), sampling, "prompt")
            reqs += self._choices(ids, sampling, request_id, frozenset(), len(reqs),
                                  constraint)
            lists.append(ids)
        return Prepared(reqs, sum(len(x) for x in lists), lists)

    # --- generation -----------------------------------------------------------------------
    def start(self, prepared: Prepared) -> list[AsyncIterator[Chunk]]:
        """Submit every choice at once (all or none) and return their chunk streams. Raises
        before anything runs when the engine is full (429) or shutting down (503), so an HTTP
        route can still answer with a status code."""
        return list(self.engine.submit(prepared.requests))

    async def stream(self, prepared: Prepared, streams: list[AsyncIterator[Chunk]] | None = None
                     ) -> AsyncIterator[tuple[int, Chunk]]:
        """Yield (choice index, chunk) as chunks arrive, through the request's stages. Closing
        the iterator (or cancelling its consumer) cancels every choice still running."""
        streams = streams if streams is not None else self.start(prepared)
        if len(streams) == 1:
            try:
                async for chunk in self._staged(prepared, 0, streams[0]):
                    yield 0, chunk
            finally:
                await close_stream(streams[0])
            return
        q: asyncio.Queue[tuple[int, Chunk | BaseException | None]] = asyncio.Queue()

        async def pump(i: int, s: AsyncIterator[Chunk]) -> None:
            try:
                async for chunk in self._staged(prepared, i, s):
                    q.put_nowait((i, chunk))
            except Exception as e:
                q.put_nowait((i, e))
            finally:
                await close_stream(s)
                q.put_nowait((i, None))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
        try:
            running = len(tasks)
            while running:
                i, item = await q.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield i, item
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _staged(self, prepared: Prepared, i: int, chunks: AsyncIterator[Chunk]
                      ) -> AsyncIterator[Chunk]:
        """Choice i's engine stream through the request's stages (a stage may end it early:
        the caller then closes the engine stream, which cancels the generation)."""
        if not prepared.stages:
            async for chunk in chunks:
                yield chunk
            return
        async for chunk in chunks:
            ended = chunk.finish_reason is not None
            for stage in prepared.stages:
                chunk = await stage(i, chunk)
            yield chunk
            if chunk.finish_reason is not None and not ended:
                return

    async def collect(self, prepared: Prepared, streams: list[AsyncIterator[Chunk]] | None = None
                      ) -> tuple[list[ChoiceResult], Usage]:
        """Run to completion and assemble every choice (the non-streaming path)."""
        results = [ChoiceResult(index=i) for i in range(len(prepared.requests))]
        async for i, chunk in self.stream(prepared, streams):
            results[i].add(chunk)
        return results, Usage(prepared.prompt_tokens, sum(len(r.token_ids) for r in results))


async def close_stream(stream: AsyncIterator[Chunk]) -> None:
    """Close a choice's chunk stream (which cancels its generation)."""
    aclose = getattr(stream, "aclose", None)  # async generators and engine streams have it
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
