"""The remote engine: gemmakit as a gateway in front of OpenAI-compatible upstreams (gemmakit,
vLLM, llama-server).

Everything above the engine stays gemmakit's: the pipeline renders the Gemma prompt, tokenizes it
with the local model's vocabulary (loaded vocabulary-only: no weights), plans tools and
constraints, polices and accounts. This engine sends the token ids to an upstream's
`/v1/completions` (streamed), turns the token ids it streams back into text with the local
vocabulary (so stop strings, stop tokens, max_tokens and usage are exact and identical whatever
the upstream), and handles what a fleet needs:

- routing (`routing.py`): least outstanding requests with two random choices, prefix affinity,
  or weighted round robin;
- health (`health.py`, `breaker.py`): active checks with the upstream's key; a circuit breaker
  per upstream (ejected after consecutive failures, one trial after a cooldown);
- time limits: connect, first byte (prefill), idle stream;
- retries on another upstream (connection errors, 429, 5xx, timeouts) with back-off and a cap,
  only while nothing has reached the client; a stream that breaks later ends with an error event
  (the pipeline's streaming layer sends it, then `[DONE]`);
- streaming pass-through: each upstream event becomes a chunk at once; closing the stream (a
  client that went away) closes the upstream connection, which cancels the upstream request.

One `stream` = one attempt loop (`_attempts`) over `_attempt`s, each a small state machine
reading the upstream's SSE lines through `_Decoder`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from gemmakit.engines.base import Engine
from gemmakit.engines.common import TokenText, finish_stats, generation_budget
from gemmakit.engines.remote.breaker import CircuitBreaker
from gemmakit.engines.remote.dialects import Event, parse_event, request_body
from gemmakit.engines.remote.health import HealthChecker, probe_sync
from gemmakit.engines.remote.metrics import UpstreamMetrics
from gemmakit.engines.remote.routing import policy
from gemmakit.engines.remote.upstreams import Pool, Upstream
from gemmakit.engines.remote.vocab import GgufVocab, Vocab
from gemmakit.errors import (
    ConfigError,
    GemmakitError,
    InvalidRequestError,
    OverloadedError,
    ServiceUnavailableError,
    UnsupportedError,
)
from gemmakit.types import (
    Capabilities,
    Chunk,
    EngineHealth,
    FinishReason,
    GenerationRequest,
    TokenLogprob,
    TopLogprob,
)

if TYPE_CHECKING:
    from gemmakit.catalog import ModelRef
    from gemmakit.settings import Settings

log = logging.getLogger("gemmakit.engine.remote")

DEFAULT_CONTEXT = 8192
"""Context assumed when neither --context-length nor any upstream says (a GGUF loaded
vocabulary-only does not know its trained context)."""
MAX_ERROR_BODY = 4096  # bytes of an upstream's error answer read for its message
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0


class UpstreamError(GemmakitError):
    """No upstream could answer, or one failed mid-stream: 502."""

    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    code = "upstream_timeout"


class _Retry(Exception):
    """An attempt that failed before anything reached the client: another upstream may try."""

    def __init__(self, error: GemmakitError) -> None:
        super().__init__(error.message)
        self.error = error


class RemoteEngine(Engine):
    name = "remote"

    def __init__(self, upstreams: Sequence[Upstream], vocab: Vocab, *,
                 context_length: int | None = None, routing: str = "least-outstanding",
                 prefix_tokens: int = 64, prefix_imbalance: int = 4,
                 connect_timeout: float = 2.0, first_byte_timeout: float = 30.0,
                 idle_timeout: float = 15.0, retries: int = 2, health_interval: float = 2.0,
                 probe: bool = True) -> None:
        self.vocab = vocab
        self.n_vocab = vocab.n_vocab
        self.capabilities = Capabilities(text=True, constraints=True)
        self.pool = Pool(upstreams, policy(routing, prefix_tokens=prefix_tokens,
                                           prefix_imbalance=prefix_imbalance))
        self.routing = routing
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        self.retries = retries
        self.metrics = UpstreamMetrics(self.pool.upstreams)
        self.checker = HealthChecker(self.pool.upstreams, health_interval,
                                     timeout=max(connect_timeout, 2.0))
        self._context_length = context_length
        self._client: Any = None
        self._rng = random.Random()
        self._closed = False
        if probe:
            ups = self.pool.upstreams
            with ThreadPoolExecutor(min(8, len(ups))) as ex:
                list(ex.map(lambda u: probe_sync(u, max(connect_timeout, 2.0)), ups))

    @classmethod
    def from_settings(cls, model: ModelRef, settings: Settings) -> RemoteEngine:
        if model.format != "gguf":
            raise ConfigError("the remote engine tokenizes with a GGUF model's vocabulary: "
                              f"'{model.name}' is {model.format} (--model names the GGUF)")
        ups = upstreams_from_settings(settings)
        return cls(ups, GgufVocab(model.path), context_length=settings.context_length,
                   routing=settings.routing, prefix_tokens=settings.prefix_tokens,
                   prefix_imbalance=settings.prefix_imbalance,
                   connect_timeout=settings.upstream_connect_timeout,
                   first_byte_timeout=settings.upstream_first_byte_timeout,
                   idle_timeout=settings.upstream_idle_timeout,
                   retries=settings.upstream_retries,
                   health_interval=settings.upstream_health_interval)

    @property
    def context_length(self) -> int:  # type: ignore[override]
        """--context-length, else the smallest context an upstream reports, else 8192."""
        return self._context_length or self.pool.context_length or DEFAULT_CONTEXT

    # --- tokenizer ------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self.vocab.tokenize(text, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.vocab.piece(t) for t in tokens).decode("utf-8", "replace")

    # --- state ----------------------------------------------------------------------------
    def _start(self) -> Any:
        """The HTTP client and the health checks, on the running event loop (first use)."""
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(None, connect=self.connect_timeout),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))
            self.checker.start(self._client)
        return self._client

    def health(self) -> EngineHealth:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to start yet
            asyncio.get_running_loop()
            self._start()
        ups = self.pool.upstreams
        healthy = [u for u in ups if u.healthy]
        down = [u.name for u in ups if not u.healthy]
        return EngineHealth(ok=bool(healthy) and not self._closed,
                            detail=f"upstreams not in rotation: {', '.join(down)}" if down else "",
                            requests_running=sum(u.inflight for u in ups))

    def health_detail(self) -> dict[str, Any]:
        return {"routing": self.routing,
                "upstreams": [u.status() for u in self.pool.upstreams]}

    def metric_families(self) -> Iterable[Any]:
        return self.metrics.families()

    async def aclose(self) -> None:
        self._closed = True
        await self.checker.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        close = getattr(self.vocab, "close", None)  # a GgufVocab frees its llama.cpp model
        if close is not None:
            close()

    # --- generation -----------------------------------------------------------------------
    def submit(self, requests: Sequence[GenerationRequest]) -> list[AsyncIterator[Chunk]]:
        """Admission before any response starts: what this engine cannot do (scoring, media),
        a prompt that cannot fit, and no upstream that may be tried now (503 with Retry-After)
        are refused here, so a streamed request gets its status code rather than a 200 and an
        error event."""
        for r in requests:
            self._admissible(r)
            self.pool.check(constrained=r.constraint is not None)
        return [self.stream(r) for r in requests]

    def _admissible(self, request: GenerationRequest) -> int:
        if request.sampling.prompt_logprobs is not None:
            raise UnsupportedError("the remote engine does not score prompts (echo with "
                                   "logprobs, prompt_logprobs).", param="logprobs")
        if request.media:
            raise UnsupportedError("the remote engine takes no image or audio input.")
        return generation_budget(request, self.context_length)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        max_tokens = self._admissible(request)
        self._start()
        tried: set[Upstream] = set()
        retries = 0
        last: GemmakitError | None = None
        while True:
            try:
                up = self.pool.choose(request.prompt_tokens, exclude=tried,
                                      constrained=request.constraint is not None)
            except ServiceUnavailableError:
                if last is not None:  # every upstream was tried: say what went wrong
                    raise last from None
                raise
            tried.add(up)
            sent = False
            try:
                async with contextlib.aclosing(self._attempt(up, request, max_tokens)) as chunks:
                    async for chunk in chunks:
                        sent = True
                        yield chunk
                return
            except _Retry as r:
                assert not sent
                last = r.error
                if retries >= self.retries:
                    raise r.error from None
                retries += 1
                log.info("request %s: %s on %s; retrying on another upstream (%d/%d)",
                         request.request_id, r.error.message, up.name, retries, self.retries)
                await asyncio.sleep(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (retries - 1))
                                    * (0.5 + self._rng.random() / 2))

    async def _attempt(self, up: Upstream, request: GenerationRequest, max_tokens: int
                       ) -> AsyncGenerator[Chunk, None]:
        """One upstream's try at `request`. Raises _Retry when it failed before its first
        chunk; after that, an UpstreamError (the stream cannot be moved elsewhere)."""
        import httpx

        client = self._start()
        t0 = time.perf_counter()
        deadline = t0 + self.first_byte_timeout
        outcome = "cancelled"
        up.inflight += 1
        resp = None
        yielded = False

        def broke(status: str, error: GemmakitError, *, eject: bool = True) -> BaseException:
            nonlocal outcome
            outcome = status
            up.last_error = error.message
            if eject:
                was = up.breaker.state
                up.breaker.failure()
                if was == "closed" and up.breaker.state != "closed":
                    log.warning("upstream %s ejected after %d consecutive failures (%s)",
                                up.name, up.breaker.consecutive, error.message)
            else:
                up.breaker.release()
            if yielded:
                return error
            return _Retry(error)

        try:
            body = request_body(up.kind or "openai", up.model or "", request, max_tokens)
            try:
                resp = await asyncio.wait_for(client.send(client.build_request(
                    "POST", f"{up.url}/v1/completions", json=body,
                    headers={**up.headers(), "X-Request-Id": request.request_id}),
                    stream=True), self.first_byte_timeout)
            except (TimeoutError, httpx.TimeoutException):
                raise broke("timeout", UpstreamTimeoutError(
                    f"upstream {up.name} did not answer in time")) from None
            except httpx.TransportError as e:
                raise broke("connect_error", UpstreamError(
                    f"upstream {up.name} could not be reached ({type(e).__name__})")) from None
            if resp.status_code != 200:
                raise await self._refusal(up, resp, broke)
            decoder = _Decoder(self.vocab, request, max_tokens, t0)
            lines = resp.aiter_lines()
            final: Chunk | None = None
            usage: dict[str, Any] | None = None
            while True:
                wait = (deadline - time.perf_counter()) if not yielded and final is None \
                    else self.idle_timeout
                try:
                    line = await asyncio.wait_for(anext(lines), max(wait, 0.001))
                except StopAsyncIteration:
                    if final is not None:
                        break
                    raise broke("stream_error", UpstreamError(
                        f"upstream {up.name} ended its stream before its last event")) from None
                except (TimeoutError, httpx.TimeoutException):
                    if final is not None:  # its usage event never came: the reply is whole
                        break
                    what = "stalled mid-stream" if yielded else "sent nothing in time"
                    raise broke("timeout", UpstreamTimeoutError(
                        f"upstream {up.name} {what}")) from None
                except httpx.TransportError as e:
                    if final is not None:
                        break
                    raise broke("stream_error", UpstreamError(
                        f"upstream {up.name} broke its stream ({type(e).__name__})")) from None
                if not line.startswith("data:"):
                    continue  # blank separators, comments (keep-alive pings)
                data = line[5:].strip()
                if data == "[DONE]":
                    if final is not None:
                        break
                    raise broke("stream_error", UpstreamError(
                        f"upstream {up.name} ended its stream before its last event"))
                try:
                    ev = parse_event(json.loads(data))
                except ValueError:
                    ev = Event(error={"message": "an event that is not JSON"})
                if ev.error is not None:
                    raise self._stream_error(up, ev.error, broke)
                if not yielded and final is None and up.breaker.state != "closed":
                    log.info("upstream %s answers again: back in rotation", up.name)
                up.breaker.success()
                if final is not None:  # after the last token: the usage event
                    usage = ev.usage or usage
                    continue
                try:
                    chunk, upstream_ended = decoder.feed(ev)
                except _Interrupted as e:  # a draining upstream ended it ("shutdown")
                    raise broke("stream_error", UpstreamError(
                        f"upstream {up.name} ended the request early ({e})")) from None
                if chunk is None:
                    continue
                if chunk.finish_reason is None:
                    yielded = True
                    yield chunk
                    continue
                final = chunk
                if not upstream_ended:  # the gateway ended it (a stop token or string)
                    break
                if ev.usage is not None:
                    usage = ev.usage
                    break
            decoder.finish(final, usage, up)
            outcome = "200"
            yielded = True
            yield final
        finally:
            up.inflight -= 1
            if outcome == "cancelled":
                up.breaker.release()
            self.metrics.observe(up, outcome, time.perf_counter() - t0)
            if resp is not None:
                # Unread, the connection closes and the upstream cancels. Shielded: a client
                # that goes away cancels this task, and a second cancellation arriving during
                # the close would otherwise leave the connection open and the upstream working.
                await asyncio.shield(resp.aclose())

    async def _refusal(self, up: Upstream, resp: Any, broke: Any) -> BaseException:
        """What a non-200 answer means: the request's own fault (400, 413, 422: passed on, not
        retried), overload (429: elsewhere, no ejection) or the upstream's (elsewhere)."""
        code = resp.status_code
        raw = b""
        async for part in resp.aiter_bytes():
            raw += part
            if len(raw) >= MAX_ERROR_BODY:
                break
        message = _error_message(raw) or resp.reason_phrase
        if code in (400, 413, 422):
            err: GemmakitError = InvalidRequestError(f"upstream {up.name} refused the request: "
                                                     f"{message}")
            err.status = code
            broke(str(code), err, eject=False)
            return err
        if code == 429:
            after = resp.headers.get("retry-after", "1")
            return broke("429", OverloadedError(
                f"upstream {up.name} is at capacity", retry_after=int(after)
                if after.isdigit() else 1), eject=False)
        return broke(str(code), UpstreamError(f"upstream {up.name} answered {code}: {message}"))

    def _stream_error(self, up: Upstream, error: dict[str, Any], broke: Any) -> BaseException:
        message = str(error.get("message") or "an error")
        if error.get("type") == "invalid_request_error":
            err = InvalidRequestError(f"upstream {up.name} refused the request: {message}")
            return broke("stream_error", err, eject=False)
        return broke("stream_error", UpstreamError(f"upstream {up.name} failed: {message}"))


class _Decoder:
    """An upstream's events to chunks. With token ids (gemmakit, vLLM, llama-server asked with
    verbose) the text is decoded here from the local vocabulary, through the same
    TokenText the local engines use: UTF-8 across tokens, stop strings, the stop tokens and
    max_tokens, whatever the upstream did. Without them the upstream's text is taken as it is
    and re-tokenized locally for the counts (approximate: see docs/scale.md)."""

    def __init__(self, vocab: Vocab, request: GenerationRequest, max_tokens: int,
                 t_submit: float) -> None:
        sp = request.sampling
        self.vocab = vocab
        self.request = request
        self.logprobs = sp.logprobs
        self.text = TokenText(sp.stop, max_tokens)
        self.stops = request.stop_token_ids if sp.ignore_eos \
            else vocab.eog_ids | request.stop_token_ids
        self.count = 0
        self.t_submit = t_submit
        self.t_first: float | None = None

    def feed(self, ev: Event) -> tuple[Chunk | None, bool]:
        """The chunk for one event (None: nothing in it) and whether the upstream ended."""
        finish: FinishReason | None = None
        lps: list[TokenLogprob] = []
        upstream_finish = _finish(ev.finish_reason)
        if ev.token_ids is not None:
            ids: list[int] = []
            text = ""
            for k, t in enumerate(ev.token_ids):
                ids.append(t)
                piece = None if t in self.stops else self.vocab.piece(t)
                s, finish = self.text.feed(piece)
                text += s
                if self.logprobs:
                    lps.append(self._logprob(ev, k, piece or b""))
                if finish is not None:
                    break
            if finish is None and upstream_finish is not None:
                text += self.text.close()
                finish = upstream_finish
        else:
            text = ev.text
            ids = self.vocab.tokenize(text) if text else []
            if self.logprobs:
                lps = [self._logprob(ev, k, tok.encode()) for k, tok in enumerate(ev.tokens)]
            finish = upstream_finish
        if not ids and not text and finish is None:
            return None, False
        if ids and self.t_first is None:
            self.t_first = time.perf_counter()
        self.count += len(ids)
        ended = finish is not None and upstream_finish is not None and finish == upstream_finish
        return Chunk(text=text, token_ids=ids, logprobs=lps, finish_reason=finish), ended

    @staticmethod
    def _logprob(ev: Event, k: int, piece: bytes) -> TokenLogprob:
        token = ev.tokens[k] if k < len(ev.tokens) else piece.decode("utf-8", "replace")
        lp = ev.token_logprobs[k] if k < len(ev.token_logprobs) else None
        top = ev.top_logprobs[k] if k < len(ev.top_logprobs) else None
        alts = tuple(TopLogprob(t, float(v), list(t.encode()))
                     for t, v in sorted((top or {}).items(), key=lambda kv: -kv[1]))
        return TokenLogprob(token, float(lp) if lp is not None else float("-inf"),
                            list(piece) or list(token.encode()), alts)

    def finish(self, final: Chunk, usage: dict[str, Any] | None, up: Upstream) -> None:
        n_prompt = len(self.request.prompt_tokens)
        cached = 0
        if usage is not None:
            details = usage.get("prompt_tokens_details") or {}
            cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
            theirs = usage.get("prompt_tokens")
            if isinstance(theirs, int) and theirs != n_prompt:
                log.warning("upstream %s counted %d prompt tokens for %d sent (does it add "
                            "a BOS token to token-id prompts?)", up.name, theirs, n_prompt)
        final.stats = finish_stats(prompt_tokens=n_prompt, completion_tokens=self.count,
                                   t_submit=self.t_submit, t_start=self.t_submit,
                                   t_first=self.t_first, now=time.perf_counter(),
                                   cached_prompt_tokens=cached)


def _finish(reason: Any) -> FinishReason | None:
    """An upstream's finish_reason as gemmakit's ("shutdown", "abort": the stream broke)."""
    if reason is None:
        return None
    if reason in ("stop", "length", "content_filter"):
        return reason
    if reason in ("shutdown", "abort", "cancelled"):
        raise _Interrupted(str(reason))
    return "stop"


class _Interrupted(Exception):
    pass


def _error_message(raw: bytes) -> str:
    try:
        obj = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:300]
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", ""))[:300]
    if isinstance(obj, dict) and "detail" in obj:
        return str(obj["detail"])[:300]
    return str(err or obj)[:300]


def upstreams_from_settings(settings: Settings) -> list[Upstream]:
    """The [[upstreams]] tables, then the --upstream URLs (with --upstream-key: one key for
    all, or one per URL)."""
    s = settings
    keys = s.upstream_key
    if keys and len(keys) not in (1, len(s.upstream)):
        raise ConfigError(f"--upstream-key: give one key for all upstreams or one per --upstream "
                          f"({len(s.upstream)}), not {len(keys)}")

    def breaker() -> CircuitBreaker:
        return CircuitBreaker(failures=s.upstream_failures, cooldown=s.upstream_cooldown)

    ups = [Upstream(c.url, c.key, c.weight, c.kind, c.model, c.name or "", breaker())
           for c in s.upstreams]
    for i, url in enumerate(s.upstream):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--upstream {url}: an http:// or https:// URL is needed")
        key = keys[0] if len(keys) == 1 else keys[i] if keys else None
        ups.append(Upstream(url, key, breaker=breaker()))
    if not ups:
        raise ConfigError("--engine remote needs upstreams: --upstream URL (repeatable) or "
                          "[[upstreams]] tables in the config file")
    names = [u.name for u in ups]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"upstream '{n}' is named twice (give each a distinct url or "
                              "name)")
    return ups


__all__ = ["RemoteEngine", "UpstreamError", "UpstreamTimeoutError", "upstreams_from_settings"]
