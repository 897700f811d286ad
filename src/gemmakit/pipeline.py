"""The request pipeline: every generation, from every caller, goes through a `Run`.

    validate -> input policy (and judge) -> prepare (render, tokenize, media, tool plan)
      -> admit (token reservation, engine admission)
      -> stream through the output stages (policy, tool parsing)
      -> account (rate-limit settlement, usage ledger, metrics)

HTTP routes, `gemmakit batch` (through the routes), `gemmakit chat`/`complete`, the Python API
and the evaluations all build a job, hand it to a `Run` and encode what comes out, so safety,
accounting and metrics hold by construction rather than because each caller remembered them.
A run is accounted exactly once, when it ends: after its last chunk, on an error, when its
consumer goes away (499), or when its caller closes it unfinished.

Internal generations (the content-policy judge, the readiness probe) are runs of their own kind:
no policy, no ledger row, and metrics of their own (`gemmakit_internal_*`), never user traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gemmakit.errors import GemmakitError, InvalidRequestError
from gemmakit.prompts import render_completion
from gemmakit.prompts.audio import Task, audio_task_messages
from gemmakit.safety.auth import PermissionDeniedError
from gemmakit.safety.validation import check_encodable, validate_messages, validate_prompts
from gemmakit.service import ChoiceResult, Prepared, Service, Usage, close_stream
from gemmakit.tools.chat import Outcome, ToolPlan, ToolStream
from gemmakit.types import (
    AudioPart,
    Chunk,
    ChunkStats,
    FinishReason,
    Message,
    SamplingParams,
    TextPart,
    TokenLogprob,
)

if TYPE_CHECKING:
    from gemmakit.engines.base import Engine
    from gemmakit.safety.auth import ApiKey
    from gemmakit.safety.layer import Safety, Screen
    from gemmakit.tools.schema import ToolSpec

log = logging.getLogger("gemmakit.pipeline")

CLIENT_CLOSED = 499  # nginx's code for "the client went away before the answer was complete"


# --- who asks, and what ---------------------------------------------------------------------
@dataclass
class Caller:
    """Who sent a request, as the edge established it."""

    request_id: str = field(default_factory=lambda: f"req-{uuid.uuid4().hex[:16]}")
    endpoint: str = "python"
    """The route path for HTTP requests (the ledger's `path`), else the calling command."""
    method: str = "POST"
    key: ApiKey | None = None
    t0: float = field(default_factory=time.perf_counter)
    disconnected: Callable[[], Awaitable[None]] | None = None
    """Resolves when the client has gone away: a non-streamed generation is then cancelled."""


@dataclass
class ChatJob:
    messages: Sequence[Message]
    sampling: SamplingParams
    tools: Any = None
    """OpenAI `tools` entries (JSON); or `specs`, already-built tool specs (Python API)."""
    specs: Sequence[ToolSpec] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: Any = None
    plan: ToolPlan | None = None
    """A tool plan already built from the fields above (the tool runner, the evaluations)."""


@dataclass
class CompletionJob:
    prompts: Sequence[str | list[int]]
    sampling: SamplingParams
    grammar: str | None = None
    """A GBNF grammar every choice follows (the `grammar` extension of /v1/completions)."""


@dataclass
class AudioJob:
    """Transcription or translation of one clip (OpenAI's audio API)."""

    audio: AudioPart
    task: Task
    sampling: SamplingParams
    language: str | None = None
    prompt: str | None = None


@dataclass
class TokenizeJob:
    """The token ids the server would prefill: for `prompt` (a raw completion prompt; with
    `add_special_tokens` it starts with <bos>, as /v1/completions prefills it) or for `messages`
    (the rendered conversation, with the tools' declarations)."""

    prompt: str | None = None
    messages: Sequence[Message] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    tools: Any = None


# --- what comes out -------------------------------------------------------------------------
@dataclass
class Delta:
    """What one choice adds, after the output stages. With tools, `text` is prose outside the
    calls and the validated calls come with the choice's last delta."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    """On a choice's first delta, when the prompt is scored (see Chunk.prompt_logprobs)."""
    schema_error: str | None = None
    """On a choice's last delta: why its structured answer failed the schema check after
    generation, or why the calls it wrote were not returned as calls (Outcome.invalid)."""


@dataclass
class Finished:
    """A request at its end, as the accounting stage books it."""

    caller: Caller
    model: str | None
    status: int
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    reached_engine: bool
    sequences: list[ChunkStats]
    internal: str | None = None
    """The kind of an internal generation ("judge", "readiness"); None for user traffic."""
    generation: bool = True
    """False for a request to a route that generates nothing (the edge books those, for the
    ledger; the metrics count generation requests only)."""
    schema_failures: list[str] = field(default_factory=list)
    """The kind ("answer", "call") of each choice that failed a check after generation."""
    wall_time: float = field(default_factory=time.time)


class Sink(Protocol):
    """Where finished requests are booked (the usage ledger, the metrics)."""

    async def book(self, f: Finished) -> None: ...


class ClientClosedError(GemmakitError):
    """The client went away before its non-streamed answer was complete."""

    status = CLIENT_CLOSED
    type = "invalid_request_error"
    code = "client_closed_request"


# --- the pipeline ---------------------------------------------------------------------------
class Pipeline:
    """One served model's request pipeline."""

    def __init__(self, service: Service, safety: Safety, sinks: Sequence[Sink] = ()) -> None:
        self.service = service
        self.safety = safety
        self.sinks = list(sinks)

    @property
    def model_name(self) -> str:
        return self.service.model_name

    @property
    def engine(self) -> Engine:
        return self.service.engine

    @property
    def grammar_tokenizer(self) -> Engine | None:
        """The engine, when its grammars may name tokens (a tool plan's budget then counts
        real tokens): what ToolPlan.build takes as `tokenizer`."""
        return self.engine if self.engine.capabilities.grammar_tokens else None

    def begin(self, caller: Caller | None = None) -> Run:
        """A new run for a user request; 403 if the caller's key may not use this model."""
        caller = caller or Caller()
        if caller.key is not None and not caller.key.allows_model(self.model_name):
            raise PermissionDeniedError(f"This API key may not use the model "
                                        f"'{self.model_name}'.", param="model")
        return Run(self, caller)

    def internal(self, kind: str) -> Run:
        """A new run for an internal generation of `kind`."""
        return Run(self, Caller(request_id=f"{kind}-{uuid.uuid4().hex[:12]}", endpoint=kind),
                   internal=kind)

    async def internal_chat(self, kind: str, messages: Sequence[Message],
                            sampling: SamplingParams) -> ChoiceResult:
        run = self.internal(kind)
        await run.chat(ChatJob(messages, sampling))
        return (await run.collect())[0]

    async def internal_completion(self, kind: str, prompt: str,
                                  sampling: SamplingParams) -> ChoiceResult:
        run = self.internal(kind)
        await run.complete(CompletionJob([prompt], sampling))
        return (await run.collect())[0]

    async def aclose(self) -> None:
        await self.service.engine.aclose()


class Run:
    """One request's lifecycle. Open it with `chat`, `complete` or `audio` (which validate,
    police, prepare and admit it, raising before any response has started), then read it with
    `stream` or `collect`. It books itself when it ends; `close` ends one its caller abandons."""

    def __init__(self, pipeline: Pipeline, caller: Caller, *, internal: str | None = None
                 ) -> None:
        self.pipeline = pipeline
        self.caller = caller
        self.internal = internal
        self.screen: Screen | None = None
        if internal is None:
            self.screen = pipeline.safety.screen(caller.request_id, caller.key)
            self.screen.judge_internal = self._judge
        self.plan = ToolPlan()
        self.prepared: Prepared | None = None
        self._streams: list[AsyncIterator[Chunk]] | None = None
        self.reached_engine = False
        self.completion_tokens = 0
        self.sequences: list[ChunkStats] = []
        self.schema_failures: list[str] = []
        self.status: int | None = None
        """Set when the run has been accounted."""
        self.generation = True
        """False for a run that generates nothing (tokenization): the metrics do not count it."""
        self._consumed = False

    @property
    def model_name(self) -> str:
        return self.pipeline.model_name

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens the engine processed (none for a request it never took)."""
        return self.prepared.prompt_tokens if self.prepared and self.reached_engine else 0

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens)

    # --- opening: validate -> police -> prepare -> admit ------------------------------------
    async def chat(self, job: ChatJob) -> None:
        await self._open(self._chat(job))

    async def complete(self, job: CompletionJob) -> None:
        await self._open(self._complete(job))

    async def audio(self, job: AudioJob) -> None:
        await self._open(self._audio(job))

    async def _open(self, work: Awaitable[None]) -> None:
        if self.prepared is not None or self.status is not None:
            raise RuntimeError("a run is opened once")
        try:
            await work
        except BaseException as e:
            await self._end(e)
            raise

    async def _chat(self, job: ChatJob) -> None:
        service, screen = self.pipeline.service, self.screen
        # validate: every text the request carries, then the limits
        for value, param in ((job.messages, "messages"), (job.sampling.stop, "stop"),
                             (job.tools, "tools"), (job.tool_choice, "tool_choice"),
                             (job.response_format, "response_format")):
            check_encodable(value, param)
        if screen is not None:
            validate_messages(job.messages, self.pipeline.safety.limits)
            screen.check_logprobs(job.sampling.logprobs)
        plan = job.plan or ToolPlan.build(
            tools=job.tools, specs=job.specs, tool_choice=job.tool_choice,
            parallel_tool_calls=job.parallel_tool_calls, response_format=job.response_format,
            parser=service.tool_parser, max_tokens=job.sampling.max_tokens,
            tokenizer=self.pipeline.grammar_tokenizer)
        check_encodable(plan.declarations, "tools")
        plan.check_engine(service.engine.capabilities, service.model_name)
        if plan.constraint is not None and job.sampling.ignore_eos:
            raise InvalidRequestError("ignore_eos cannot be used with a constrained reply (the "
                                      "grammar ends it).", param="ignore_eos")
        self.plan = plan
        # input policy and judge
        messages = list(job.messages)
        if screen is not None:
            messages = screen.police_messages(messages)
            await screen.judge_input("\n\n".join(_text_of(m) for m in messages), "messages")
        # prepare and admit
        prepared = service.prepare_chat(messages, job.sampling, self.caller.request_id,
                                        tools=plan.declarations, constraint=plan.constraint)
        await self._admit(prepared)

    async def _complete(self, job: CompletionJob) -> None:
        service, screen = self.pipeline.service, self.screen
        prompts = list(job.prompts)
        many = len(prompts) > 1
        for k, p in enumerate(prompts):
            check_encodable(p, f"prompt[{k}]" if many else "prompt")
        check_encodable(job.sampling.stop, "stop")
        if screen is not None:
            validate_prompts(prompts, self.pipeline.safety.limits)
            screen.check_logprobs(job.sampling.logprobs)
            if screen.inspects_input() and any(not isinstance(p, str) for p in prompts):
                raise InvalidRequestError("token-id prompts cannot be checked by this server's "
                                          "content policy; send text.", param="prompt")
            prompts = [screen.police_text(p, f"prompt[{k}]" if many else "prompt")
                       if isinstance(p, str) else p for k, p in enumerate(prompts)]
            await screen.judge_input("\n\n".join(p for p in prompts if isinstance(p, str)),
                                     "prompt")
        constraint = None
        if job.grammar is not None:
            from gemmakit.tools.constraints import checked_grammar

            constraint = checked_grammar(job.grammar, service.engine.capabilities,
                                         service.model_name, ignore_eos=job.sampling.ignore_eos)
        await self._admit(service.prepare_completion(prompts, job.sampling,
                                                     self.caller.request_id,
                                                     constraint=constraint))

    async def _audio(self, job: AudioJob) -> None:
        service, screen = self.pipeline.service, self.screen
        check_encodable(job.prompt, "prompt")
        prompt = job.prompt
        if screen is not None:
            limits = self.pipeline.safety.limits
            if "input_audio" not in limits.allowed_content_types:
                raise InvalidRequestError("audio input is not accepted by this server.",
                                          param="file")
            if len(job.audio.data) > limits.max_audio_bytes:
                raise InvalidRequestError(f"the audio is {len(job.audio.data)} bytes (the limit "
                                          f"is {limits.max_audio_bytes}).", param="file")
            if prompt:
                prompt = screen.police_text(prompt, "prompt")
                await screen.judge_input(prompt, "prompt")
        messages = audio_task_messages(job.audio, job.task, language=job.language,
                                       prompt=prompt)
        try:
            prepared = service.prepare_chat(messages, job.sampling, self.caller.request_id)
        except GemmakitError as e:  # the audio part (and what its tokens take) is the upload
            if e.param == "messages" or (e.param or "").startswith("messages[0].content[0]"):
                e.message = e.message.replace("messages[0].content[0]", "file")
                e.param = "file"
            raise
        await self._admit(prepared)

    async def _admit(self, prepared: Prepared) -> None:
        """Reserve the worst-case tokens (TPM), attach the output stage, then submit to the
        engine (which may refuse: 429 when full, 503 when draining)."""
        if self.screen is not None:
            await self.screen.reserve(prepared, self.pipeline.engine.context_length)
            if self.screen.watches_output():
                prepared.stages.append(self.screen.stage)
        self._streams = self.pipeline.service.start(prepared)
        self.prepared = prepared

    # --- tokenization: validated and booked like every request, generating nothing ----------
    async def tokenize(self, job: TokenizeJob) -> list[int]:
        """The token ids the server would prefill for `job` (see TokenizeJob)."""
        self.generation = False
        try:
            ids = self._tokenize(job)
        except BaseException as e:
            await self._end(e)
            raise
        await self._end(None)
        return ids

    def _tokenize(self, job: TokenizeJob) -> list[int]:
        service = self.pipeline.service
        if (job.prompt is None) == (job.messages is None):
            raise InvalidRequestError("give either 'prompt' or 'messages'.", param="prompt")
        if job.prompt is not None:
            check_encodable(job.prompt, "prompt")
            if self.screen is not None:
                validate_prompts([job.prompt], self.pipeline.safety.limits)
            if not job.add_special_tokens:
                return service.engine.tokenize(job.prompt)
            return service.tokenize_prompt(render_completion(job.prompt))
        assert job.messages is not None
        check_encodable(job.messages, "messages")
        check_encodable(job.tools, "tools")
        if self.screen is not None:
            validate_messages(job.messages, self.pipeline.safety.limits)
        plan = ToolPlan.build(tools=job.tools, parser=service.tool_parser)
        _, ids, _ = service.chat_prompt(job.messages, tools=plan.declarations,
                                        add_generation_prompt=job.add_generation_prompt)
        return ids

    async def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of `tokens` (control tokens render as nothing)."""
        self.generation = False
        engine = self.pipeline.engine
        try:
            bad = [t for t in tokens if not 0 <= t < engine.n_vocab]
            if bad:
                raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary (0 to "
                                          f"{engine.n_vocab - 1}).", param="tokens")
            text = engine.detokenize(tokens)
        except BaseException as e:
            await self._end(e)
            raise
        await self._end(None)
        return text

    # --- reading: stream or collect --------------------------------------------------------
    async def _chunks(self) -> AsyncGenerator[tuple[int, Chunk], None]:
        """(choice index, chunk) after the output stages; the run ends with the iteration."""
        if self.prepared is None or self._streams is None:
            raise RuntimeError("open the run before reading it")
        if self._consumed:
            raise RuntimeError("a run is read once")
        self._consumed = True
        error: BaseException | None = None
        try:
            async for i, chunk in self.pipeline.service.stream(self.prepared, self._streams):
                self.reached_engine = True  # the engine has taken the prompt
                self.completion_tokens += len(chunk.token_ids)
                if chunk.finish_reason is not None and chunk.stats is not None:
                    self.sequences.append(chunk.stats)
                yield i, chunk
        except BaseException as e:
            error = e
            raise
        finally:
            await self._end(error)

    async def stream(self) -> AsyncIterator[Delta]:
        """Each choice's deltas as they come (tool calls parsed incrementally). Closing the
        iterator, or cancelling its consumer, cancels every choice still running."""
        plan = self.plan
        n = len(self.prepared.requests) if self.prepared is not None else 0
        tools: list[ToolStream] | None = [plan.streamer() for _ in range(n)] \
            if plan.active else None
        # A structured answer is checked when it ends, so its text is kept until then.
        answers: list[str] | None = [""] * n \
            if tools is None and plan.response_schema is not None else None
        chunks = self._chunks()
        try:
            async for i, chunk in chunks:
                if tools is None:
                    why = None
                    if answers is not None:
                        answers[i] += chunk.text
                        if chunk.finish_reason is not None:
                            why = self._checked(plan.answer(answers[i], chunk.finish_reason))
                    yield Delta(i, chunk.text, chunk.token_ids, chunk.logprobs, [],
                                chunk.finish_reason, chunk.prompt_logprobs, why)
                    continue
                text = tools[i].feed(chunk.text) if chunk.text else ""
                if chunk.finish_reason is None:
                    yield Delta(i, text, chunk.token_ids, chunk.logprobs)
                    continue
                rest, outcome = tools[i].finish(chunk.finish_reason)
                yield Delta(i, text + rest, chunk.token_ids, chunk.logprobs, outcome.tool_calls,
                            outcome.finish_reason, schema_error=self._checked(outcome))
        finally:
            await chunks.aclose()

    def _checked(self, outcome: Outcome) -> str | None:
        """`outcome.invalid`, counted for the metrics."""
        if outcome.invalid_kind is not None:
            self.schema_failures.append(outcome.invalid_kind)
        return outcome.invalid

    async def collect(self) -> list[ChoiceResult]:
        """Run to completion and assemble every choice (the non-streaming path). When the
        caller's client goes away first, the generation is cancelled (ClientClosedError)."""
        results = [ChoiceResult(index=i) for i in range(
            len(self.prepared.requests) if self.prepared is not None else 0)]
        work = asyncio.ensure_future(self._gather(results))
        if self.caller.disconnected is None:
            await work
            return results
        watch = asyncio.ensure_future(self.caller.disconnected())
        try:
            done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            watch.cancel()
        if work not in done:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            raise ClientClosedError("the client closed the connection")
        work.result()
        return results

    async def _gather(self, results: list[ChoiceResult]) -> None:
        async for i, chunk in self._chunks():
            r = results[i]
            r.add(chunk)
            if chunk.finish_reason is not None:  # checked before the run ends and is booked
                out = self.plan.finish(r.text, r.finish_reason)
                r.content, r.tool_calls, r.finish_reason = out.content, out.tool_calls, \
                    out.finish_reason
                r.schema_error = self._checked(out)

    # --- what the policy did --------------------------------------------------------------------
    def decorate(self, response: dict[str, Any]) -> dict[str, Any]:
        return self.screen.decorate(response) if self.screen is not None else response

    def decorate_events(self, events: AsyncIterator[dict[str, Any]]
                        ) -> AsyncIterator[dict[str, Any]]:
        return self.screen.decorate_events(events) if self.screen is not None else events

    # --- the end: account -------------------------------------------------------------------
    async def close(self, status: int | None = None) -> None:
        """End a run its caller abandons (never read, or read no further): cancel what is still
        running and book it with `status` (the caller's, e.g. the HTTP status sent) if it has
        not been booked yet."""
        if self.status is not None:
            return
        if self._streams is not None and not self._consumed:
            for s in self._streams:
                await close_stream(s)
        await self._end(None, status=status)

    async def _end(self, error: BaseException | None, status: int | None = None) -> None:
        if self.status is not None:
            return
        self.status = status if status is not None else _status_of(error)
        f = Finished(self.caller, self.model_name, self.status,
                     time.perf_counter() - self.caller.t0, self.prompt_tokens,
                     self.completion_tokens, self.reached_engine, list(self.sequences),
                     self.internal, generation=self.generation,
                     schema_failures=list(self.schema_failures))
        # Shielded: a client that disconnects mid-stream cancels this task, but its tokens must
        # still be booked against the key, in the ledger and in the metrics.
        task = asyncio.ensure_future(self._book(f))
        with contextlib.suppress(Exception):  # logged by _book
            await asyncio.shield(task)

    async def _book(self, f: Finished) -> None:
        if self.screen is not None:
            try:
                await self.screen.settle(f.prompt_tokens + f.completion_tokens)
            except Exception:
                log.exception("request %s: settling its rate-limit reservation failed",
                              f.caller.request_id)
            self.screen.log_output()
        for sink in self.pipeline.sinks:
            try:
                await sink.book(f)
            except Exception:  # accounting observes; it never fails a request
                log.exception("request %s: booking it failed (%s)", f.caller.request_id,
                              type(sink).__name__)

    async def _judge(self, messages: Sequence[Message], sampling: SamplingParams
                     ) -> ChoiceResult:
        return await self.pipeline.internal_chat("judge", messages, sampling)


def _status_of(error: BaseException | None) -> int:
    if error is None:
        return 200
    if isinstance(error, GemmakitError):
        return error.status
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return CLIENT_CLOSED
    return 500


def _text_of(m: Message) -> str:
    if isinstance(m.content, str):
        return m.content
    if isinstance(m.content, list):
        return "\n".join(p.text for p in m.content if isinstance(p, TextPart))
    return ""


__all__ = ["Caller", "ChatJob", "CompletionJob", "AudioJob", "TokenizeJob", "Delta", "Finished",
           "Sink",
           "Pipeline", "Run", "ClientClosedError", "CLIENT_CLOSED"]
