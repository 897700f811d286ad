"""The safety layer on the HTTP path (DESIGN: auth -> rate limit -> validate -> input policy).

`Guard` is pure ASGI middleware, inside `RequestContext` (which gives the request id and bounds
the body). Per request it:
- refuses oversized headers (431);
- on protected paths (every `/v1/*` and `/admin/*` route, and `/metrics` with --metrics-auth)
  requires an API key (401), a model the key may use (403) and a free RPM slot (429);
- adds the `x-ratelimit-*` headers to the response;
- afterwards corrects the TPM reservation to the real token count, writes the usage ledger row and
  one access-log line with the request id and a short hash of the body (never the content).

Routes reach the per-request `Call` (validation, input policy, TPM reservation, output policy) with
`request_guard(request)`; the rule that decides which paths need a key is path-based, so routes
added later are covered without edits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gemmakit.errors import GemmakitError, InvalidRequestError
from gemmakit.safety.auth import ApiKey, AuthenticationError, KeyStore, PermissionDeniedError
from gemmakit.safety.auth import secret_from_headers
from gemmakit.safety.media import MediaPolicy, resolve_url
from gemmakit.safety.policy import Hits, OutputFilter, Policy, PolicyViolationError
from gemmakit.safety.ratelimit import (
    Decision,
    Limits,
    RateLimitError,
    RateLimitStore,
    headers_for,
    open_store,
)
from gemmakit.safety.usage import UsageLedger, UsageRecord
from gemmakit.safety.validation import RequestLimits, validate_chat, validate_prompts
from gemmakit.server.errors import error_body, gemmakit_error_body
from gemmakit.server.streaming import dumps
from gemmakit.types import Chunk, Message as ChatMsg, TextPart

if TYPE_CHECKING:
    from fastapi import Request

    from gemmakit.safety.classifier import Classifier
    from gemmakit.service import Prepared, Service
    from gemmakit.settings import Settings

log = logging.getLogger("gemmakit.access")
LOUD = "[--log-content is ON: this log holds private prompt and completion text]"


@dataclass
class Safety:
    """The app-wide safety state, built once from settings."""

    settings: Settings
    limits: RequestLimits
    media: MediaPolicy
    keys: KeyStore | None = None
    limiter: RateLimitStore | None = None
    ledger: UsageLedger | None = None
    policy: Policy | None = None
    classifier: Classifier | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> Safety:
        safety = cls(s, RequestLimits.from_settings(s),
                     MediaPolicy(allow_remote=s.allow_remote_media,
                                 allow_private=s.remote_media_private, media_dir=s.media_dir,
                                 max_bytes=s.max_image_bytes))
        if s.auth:
            safety.keys = KeyStore(s.home)
            safety.limiter = open_store(s.ratelimit_store)
        if s.usage_ledger:
            safety.ledger = UsageLedger(s.home)
        if s.policy.rules:
            safety.policy = Policy(s.policy)
        if s.policy.classifier.enabled:
            from gemmakit.safety.classifier import Classifier

            safety.classifier = Classifier(s.policy.classifier)
        if s.log_content:
            log.warning("%s", LOUD)
        return safety

    def needs_key(self, path: str) -> bool:
        if self.keys is None:
            return False
        if path.startswith(("/v1/", "/admin/")) or path in ("/v1", "/admin"):
            return True
        return path.startswith("/metrics") and self.settings.metrics_auth

    async def aclose(self) -> None:
        if self.limiter is not None:
            await self.limiter.aclose()
        if self.ledger is not None:
            self.ledger.close()
        if self.keys is not None:
            self.keys.close()


def request_guard(request: Request) -> Call:
    return request.scope["state"]["guard"]


@dataclass
class Call:
    """One request's view of the safety layer."""

    safety: Safety
    request_id: str
    key: ApiKey | None = None
    decision: Decision | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reserved_entry: str | None = None
    input_hits: Hits = field(default_factory=Hits)
    filters: dict[int, OutputFilter] = field(default_factory=dict)
    choice_hits: dict[int, Hits] = field(default_factory=dict)
    service: Service | None = None
    output_text: dict[int, str] = field(default_factory=dict)
    _announced: set[tuple[int, str]] = field(default_factory=set)

    @property
    def limits(self) -> Limits:
        return Limits(self.key.rpm, self.key.tpm) if self.key is not None else Limits()

    # --- input --------------------------------------------------------------------------------
    async def chat_input(self, body: Any, service: Service) -> list[ChatMsg]:
        """Validate a chat request, resolve media URLs, apply the input policy and the judge;
        return the messages to render."""
        self.model = body.model
        validate_chat(body.messages, self.safety.limits)
        self._check_logprobs(bool(body.logprobs))
        for i, m in enumerate(body.messages):
            for j, part in enumerate(m.content if isinstance(m.content, list) else ()):
                if part.type == "image_url":
                    part.image_url.url = await resolve_url(
                        part.image_url.url, self.safety.media,
                        f"messages[{i}].content[{j}].image_url.url")
        messages = body.to_messages()
        policy = self.safety.policy
        if policy is not None and policy.applies("input"):
            messages = [self._police_message(policy, i, m) for i, m in enumerate(messages)]
        await self._judge(service, "\n\n".join(_text_of(m) for m in messages), "messages")
        return messages

    async def completion_input(self, body: Any, service: Service) -> list[str | list[int]]:
        self.model = body.model
        prompts = body.prompts()
        validate_prompts(prompts, self.safety.limits)
        self._check_logprobs(body.logprobs is not None)
        policy = self.safety.policy
        checked = policy is not None and policy.applies("input") or (
            self.safety.classifier is not None and self.safety.classifier.applies("input"))
        if checked and any(not isinstance(p, str) for p in prompts):
            raise InvalidRequestError("token-id prompts cannot be checked by this server's "
                                      "content policy; send text.", param="prompt")
        if policy is not None and policy.applies("input"):
            prompts = [policy.apply_input(p, "prompt" if len(prompts) == 1 else f"prompt[{k}]",
                                          self.input_hits, self.request_id)
                       for k, p in enumerate(prompts)]  # type: ignore[arg-type]
        await self._judge(service, "\n\n".join(p for p in prompts if isinstance(p, str)),
                          "prompt")
        return prompts

    def _check_logprobs(self, wanted: bool) -> None:
        policy = self.safety.policy
        if wanted and policy is not None and policy.output_rewrites():
            raise InvalidRequestError("logprobs are not available on this server: they would "
                                      "reveal text its content policy masks.", param="logprobs")

    def _police_message(self, policy: Policy, i: int, m: ChatMsg) -> ChatMsg:
        if isinstance(m.content, str):
            return replace(m, content=policy.apply_input(m.content, f"messages[{i}].content",
                                                         self.input_hits, self.request_id))
        if isinstance(m.content, list):
            parts = [TextPart(policy.apply_input(p.text, f"messages[{i}].content[{j}].text",
                                                 self.input_hits, self.request_id))
                     if isinstance(p, TextPart) else p for j, p in enumerate(m.content)]
            return replace(m, content=parts)
        return m

    async def _judge(self, service: Service, text: str, param: str) -> None:
        clf = self.safety.classifier
        if clf is None or not clf.applies("input") or not text:
            return
        verdict = await clf.judge(service, text, "input")
        if verdict.violates:
            self.input_hits.add("classifier", clf.config.action)
            log.warning("request %s: input judged a violation (p=%.2f)", self.request_id,
                        verdict.p_violation)
            if clf.config.action == "block":
                raise PolicyViolationError("The request was refused by the content policy "
                                           "(rule 'classifier').", param=param)

    # --- admission and output -----------------------------------------------------------------
    async def admit(self, prepared: Prepared, service: Service) -> list[AsyncIterator[Chunk]]:
        """Reserve the request's worst-case tokens (TPM), attach the output stage, then submit
        it to the engine (which may refuse it: 429 when full, 503 when draining). Returns the
        choices' streams."""
        self.prompt_tokens = prepared.prompt_tokens
        self.service = service
        limiter, limits = self.safety.limiter, self.limits
        if limiter is not None and self.key is not None and limits.tpm is not None:
            ctx = service.engine.context_length
            worst = prepared.prompt_tokens + sum(
                r.sampling.max_tokens if r.sampling.max_tokens is not None
                else ctx - len(r.prompt_tokens) for r in prepared.requests)
            entry = f"{self.request_id}:tokens"
            d = await limiter.acquire(self.key.name, limits, entry=entry, tokens=worst)
            self.decision = d
            if d.too_large:
                raise RateLimitError(
                    f"This request may use up to {worst} tokens (prompt plus max_tokens), more "
                    f"than this key's limit of {limits.tpm} tokens per minute; lower max_tokens.",
                    None, "tokens")
            if not d.allowed:
                raise RateLimitError(f"Rate limit reached: {limits.tpm} tokens per minute for "
                                     f"this key. Retry after {d.retry_after_s:.1f} s.",
                                     d.retry_after_s, "tokens")
            self.reserved_entry = entry
        prepared.stages.append(self.stage)
        try:
            return service.start(prepared)
        except GemmakitError:
            self.prompt_tokens = 0  # refused by the engine: nothing was processed, nothing booked
            raise

    async def stage(self, i: int, chunk: Chunk) -> Chunk:
        """Every generated chunk passes here: token counting, output policy, output judge."""
        self.completion_tokens += len(chunk.token_ids)
        policy, clf = self.safety.policy, self.safety.classifier
        text = chunk.text
        if policy is not None and policy.applies("output"):
            f = self.filters.get(i) or self.filters.setdefault(i, policy.output_filter(
                self.request_id, self._hits(i)))
            text = f.feed(text)
            if f.blocked is None and chunk.finish_reason is not None:
                text += f.flush()
            if f.blocked is not None:
                return Chunk(text=text, token_ids=chunk.token_ids, finish_reason="content_filter",
                             stats=chunk.stats)
        judged = clf is not None and clf.applies("output")
        if judged or self.safety.settings.log_content:
            self.output_text[i] = self.output_text.get(i, "") + text
        if judged:
            # The judge needs the whole answer: hold the choice's text until it is finished.
            if chunk.finish_reason is None:
                return Chunk(token_ids=chunk.token_ids, logprobs=chunk.logprobs)
            full = self.output_text.get(i, "")
            assert self.service is not None
            verdict = await clf.judge(self.service, full, "output") if full else None
            if verdict is not None and verdict.violates:
                self._hits(i).add("classifier", clf.config.action)
                log.warning("request %s: output judged a violation (p=%.2f)", self.request_id,
                            verdict.p_violation)
                if clf.config.action == "block":
                    return Chunk(token_ids=chunk.token_ids, finish_reason="content_filter",
                                 stats=chunk.stats)
            return Chunk(text=full, token_ids=chunk.token_ids, logprobs=chunk.logprobs,
                         finish_reason=chunk.finish_reason, stats=chunk.stats)
        if text is chunk.text:
            return chunk
        return Chunk(text=text, token_ids=chunk.token_ids, logprobs=chunk.logprobs,
                     finish_reason=chunk.finish_reason, stats=chunk.stats)

    def _hits(self, i: int) -> Hits:
        return self.choice_hits.setdefault(i, Hits())

    def decorate(self, response: dict[str, Any]) -> dict[str, Any]:
        """Say in a finished response what the policy did (Azure OpenAI's field names)."""
        if self.input_hits:
            response["prompt_filter_results"] = [
                {"prompt_index": 0, "content_filter_results": self.input_hits.as_dict()}]
        for choice in response.get("choices", []):
            hits = self.choice_hits.get(choice.get("index"))
            if hits:
                choice["content_filter_results"] = hits.as_dict()
        return response

    async def decorate_events(self, events: AsyncIterator[dict[str, Any]]
                              ) -> AsyncIterator[dict[str, Any]]:
        """The streamed version: the first event says what the input policy did; a choice's
        event says what the output policy did as soon as it has acted."""
        first = True
        async for ev in events:
            if first and self.input_hits:
                ev["prompt_filter_results"] = [
                    {"prompt_index": 0, "content_filter_results": self.input_hits.as_dict()}]
            first = False
            for choice in ev.get("choices", []):
                hits = self.choice_hits.get(choice.get("index"))
                if hits:
                    new = {(choice["index"], r) for r in hits.counts} - self._announced
                    if new or choice.get("finish_reason"):
                        choice["content_filter_results"] = hits.as_dict()
                        self._announced |= new
            yield ev

    # --- after the response -------------------------------------------------------------------
    async def finish(self, method: str, path: str, status: int, latency_s: float,
                     body_hash: str, body: bytes) -> None:
        s = self.safety
        if self.reserved_entry is not None and s.limiter is not None and self.key is not None:
            await s.limiter.adjust(self.key.name, self.reserved_entry,
                                   self.prompt_tokens + self.completion_tokens)
        key_name = self.key.name if self.key is not None else None
        if s.ledger is not None and path.startswith("/v1/"):
            s.ledger.record(UsageRecord(time.time(), self.request_id, key_name, method, path,
                                        self.model, self.prompt_tokens, self.completion_tokens,
                                        status, latency_s * 1000))
        log.info("%s %s %s status=%d key=%s model=%s prompt_tokens=%d completion_tokens=%d "
                 "latency_ms=%.0f body=sha256:%s", self.request_id, method, path, status,
                 key_name or "-", self.model or "-", self.prompt_tokens, self.completion_tokens,
                 latency_s * 1000, body_hash)
        if s.settings.log_content:
            log.warning("%s %s request body: %s", LOUD, self.request_id,
                        body.decode("utf-8", "replace"))
            for i, text in sorted(self.output_text.items()):
                log.warning("%s %s choice %d output: %s", LOUD, self.request_id, i, text)


def _text_of(m: ChatMsg) -> str:
    if isinstance(m.content, str):
        return m.content
    if isinstance(m.content, list):
        return "\n".join(p.text for p in m.content if isinstance(p, TextPart))
    return ""


class Guard:
    """Pure ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, safety: Safety) -> None:
        self.app = app
        self.safety = safety

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        rid = state.get("request_id", "-")
        s = self.safety
        raw_headers = scope.get("headers") or []
        if sum(len(k) + len(v) + 4 for k, v in raw_headers) > s.settings.max_header_bytes:
            return await _send_error(send, 431, error_body(
                f"The request headers are larger than the limit of "
                f"{s.settings.max_header_bytes} bytes.", "invalid_request_error", None,
                "request_header_fields_too_large"))
        # RequestContext (the outermost layer) has read the body, bounded, and replays it to the
        # app; the guard only needs it to hash and to find the model.
        body: bytes = state["body"]

        call = Call(s, rid)
        state["guard"] = call
        status = 500
        path, method = scope["path"], scope["method"]

        async def send_with_limits(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if call.key is not None and call.decision is not None:
                    message["headers"] = [*message.get("headers", []),
                                          *headers_for(call.limits, call.decision)]
            await send(message)

        t0 = time.perf_counter()
        try:
            if s.needs_key(path):
                refusal = await self._admit_key(call, dict(raw_headers), method, body)
                if refusal is not None:
                    status_code, payload, extra = refusal
                    return await _send_error(send_with_limits, status_code, payload, extra)
            await self.app(scope, receive, send_with_limits)
        finally:
            # Shielded: a client that disconnects mid-stream cancels this task, but its tokens
            # must still be booked against the key and written to the ledger.
            done = asyncio.ensure_future(call.finish(
                method, path, status, time.perf_counter() - t0,
                hashlib.sha256(body).hexdigest()[:12], body))
            done.add_done_callback(_log_failure)
            with contextlib.suppress(Exception):  # logged by _log_failure
                await asyncio.shield(done)

    async def _admit_key(self, call: Call, headers: dict[bytes, bytes], method: str,
                         body: bytes) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        s = self.safety
        assert s.keys is not None
        try:
            key = s.keys.authenticate(secret_from_headers(headers))
        except AuthenticationError as e:
            return 401, gemmakit_error_body(e), {"www-authenticate": "Bearer"}
        call.key = key
        s.keys.touch(key)
        if key.models is not None and method == "POST":
            model = _model_of(body)
            if model is not None and not key.allows_model(model):
                e2 = PermissionDeniedError(f"This API key may not use the model '{model}'.",
                                           param="model")
                return 403, gemmakit_error_body(e2), {}
        if s.limiter is not None and not call.limits.unlimited:
            d = await s.limiter.acquire(key.name, call.limits, entry=f"{call.request_id}:req",
                                        requests=1 if key.rpm is not None else 0)
            call.decision = d
            if not d.allowed:
                err = RateLimitError(f"Rate limit reached: {key.rpm} requests per minute for "
                                     f"this key. Retry after {d.retry_after_s:.1f} s.",
                                     d.retry_after_s)
                return 429, gemmakit_error_body(err), err.headers
        return None


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("recording usage failed", exc_info=task.exception())


def _model_of(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) else None


async def _send_error(send: Send, status: int, payload: dict[str, Any],
                      extra: dict[str, str] | None = None) -> None:
    data = dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


__all__ = ["Guard", "Safety", "Call", "request_guard"]
