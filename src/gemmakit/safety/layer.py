"""The safety layer as the request pipeline applies it, below HTTP.

`Safety` is the app-wide state built once from settings: request limits, the media policy, the
content policy and its judge, and — for a server — API keys, the rate-limit store and the usage
ledger. `Screen` is one request's view of it: input policy, the judge, the token reservation
against the key's TPM limit, the output stage (policy and judge on the generated stream), and what
the finished response says the policy did.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gemmakit.errors import InvalidRequestError
from gemmakit.safety.media import MediaPolicy
from gemmakit.safety.policy import Hits, OutputFilter, Policy, PolicyViolationError
from gemmakit.safety.ratelimit import Decision, Limits, RateLimitError, RateLimitStore, open_store
from gemmakit.safety.validation import RequestLimits
from gemmakit.types import Chunk, Message, SamplingParams, TextPart

if TYPE_CHECKING:
    from gemmakit.pipeline import Finished
    from gemmakit.safety.auth import ApiKey, KeyStore
    from gemmakit.safety.classifier import Classifier
    from gemmakit.safety.store import StateStore
    from gemmakit.safety.usage import UsageLedger
    from gemmakit.service import ChoiceResult, Prepared
    from gemmakit.settings import Settings

log = logging.getLogger("gemmakit.access")
LOUD = "[--log-content is ON: this log holds private prompt and completion text]"

TOKENIZER_PATHS = frozenset({"/tokenize", "/detokenize", "/tokenizer_info"})
"""Routes outside /v1 that need a key too (the server's tokenizer)."""

InternalChat = Callable[[Sequence[Message], SamplingParams], Awaitable["ChoiceResult"]]
"""Runs one internal generation (the judge's), accounted apart from user traffic."""


@dataclass
class Safety:
    """The app-wide safety state, built once from settings."""

    settings: Settings
    limits: RequestLimits
    media: MediaPolicy
    state: StateStore | None = None
    """Where keys and the usage ledger live (`--store`)."""
    keys: KeyStore | None = None
    limiter: RateLimitStore | None = None
    ledger: UsageLedger | None = None
    policy: Policy | None = None
    classifier: Classifier | None = None

    @classmethod
    def from_settings(cls, s: Settings, *, server: bool = True) -> Safety:
        """`server`: also open what only a server has (keys and rate limits with --auth, the
        usage ledger); in-process callers (CLI, Python API) get limits and the content policy."""
        safety = cls(s, RequestLimits.from_settings(s),
                     MediaPolicy(allow_remote=s.allow_remote_media,
                                 allow_private=s.remote_media_private, media_dir=s.media_dir,
                                 max_bytes=s.max_image_bytes))
        if server and (s.auth or s.usage_ledger):
            # One state store for keys and ledger: SQLite, or PostgreSQL shared by replicas.
            from gemmakit.safety.store import open_state_store

            state = safety.state = open_state_store(s.store, s.home)
            if s.auth:
                from gemmakit.safety.auth import KeyStore

                safety.keys = KeyStore(state)
                safety.limiter = open_store(s.ratelimit_store)
            if s.usage_ledger:
                from gemmakit.safety.usage import UsageLedger

                safety.ledger = UsageLedger(state)
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
        if path.startswith(("/v1/", "/admin/", "/api/")) or path in ("/v1", "/admin") \
                or path in TOKENIZER_PATHS:  # /api/ps: the loaded models (Ollama's shape)
            return True
        return path.startswith("/metrics") and self.settings.metrics_auth

    def screen(self, request_id: str, key: ApiKey | None) -> Screen:
        return Screen(self, request_id, key)

    async def book(self, f: Finished) -> None:
        """The usage ledger's row for a finished request (user traffic only)."""
        endpoint = f.caller.endpoint
        if self.ledger is None or f.internal is not None or not (
                endpoint.startswith("/v1/") or endpoint in TOKENIZER_PATHS):
            return
        from gemmakit.safety.usage import UsageRecord

        c = f.caller
        self.ledger.record(UsageRecord(f.wall_time, c.request_id,
                                       c.key.name if c.key is not None else None, c.method,
                                       c.endpoint, f.model, f.prompt_tokens, f.completion_tokens,
                                       f.status, f.latency_s * 1000))

    async def aclose(self) -> None:
        if self.limiter is not None:
            await self.limiter.aclose()
        if self.ledger is not None:
            self.ledger.close()
        if self.keys is not None:
            self.keys.close()
        if self.state is not None:
            self.state.close()


@dataclass
class Screen:
    """One request's view of the safety layer."""

    safety: Safety
    request_id: str
    key: ApiKey | None = None
    decision: Decision | None = None
    """The latest rate-limit decision for this request (the x-ratelimit-* headers)."""
    reserved_entry: str | None = None
    input_hits: Hits = field(default_factory=Hits)
    filters: dict[int, OutputFilter] = field(default_factory=dict)
    choice_hits: dict[int, Hits] = field(default_factory=dict)
    output_text: dict[int, str] = field(default_factory=dict)
    judge_internal: InternalChat | None = None
    _announced: set[tuple[int, str]] = field(default_factory=set)

    @property
    def limits(self) -> Limits:
        return Limits(self.key.rpm, self.key.tpm) if self.key is not None else Limits()

    # --- input --------------------------------------------------------------------------------
    def check_logprobs(self, wanted: bool) -> None:
        policy = self.safety.policy
        if wanted and policy is not None and policy.output_rewrites():
            raise InvalidRequestError("logprobs are not available on this server: they would "
                                      "reveal text its content policy masks.", param="logprobs")

    def inspects_input(self) -> bool:
        policy, clf = self.safety.policy, self.safety.classifier
        return (policy is not None and policy.applies("input")) or (
            clf is not None and clf.applies("input"))

    def police_text(self, text: str, param: str) -> str:
        """One piece of request text through the input rules (raises on block, masks)."""
        policy = self.safety.policy
        if policy is None or not policy.applies("input"):
            return text
        return policy.apply_input(text, param, self.input_hits, self.request_id)

    def police_messages(self, messages: Sequence[Message]) -> list[Message]:
        policy = self.safety.policy
        if policy is None or not policy.applies("input"):
            return list(messages)
        return [self._police_message(i, m) for i, m in enumerate(messages)]

    def _police_message(self, i: int, m: Message) -> Message:
        if isinstance(m.content, str):
            return replace(m, content=self.police_text(m.content, f"messages[{i}].content"))
        if isinstance(m.content, list):
            parts = [TextPart(self.police_text(p.text, f"messages[{i}].content[{j}].text"))
                     if isinstance(p, TextPart) else p for j, p in enumerate(m.content)]
            return replace(m, content=parts)
        return m

    async def judge_input(self, text: str, param: str) -> None:
        clf = self.safety.classifier
        if clf is None or not clf.applies("input") or not text:
            return
        assert self.judge_internal is not None
        verdict = await clf.judge(self.judge_internal, text, "input")
        if verdict.violates:
            self.input_hits.add("classifier", clf.config.action)
            log.warning("request %s: input judged a violation (p=%.2f)", self.request_id,
                        verdict.p_violation)
            if clf.config.action == "block":
                raise PolicyViolationError("The request was refused by the content policy "
                                           "(rule 'classifier').", param=param)

    # --- admission ----------------------------------------------------------------------------
    async def reserve(self, prepared: Prepared, context_length: int) -> None:
        """Reserve the request's worst case (prompt plus every choice's max_tokens) against the
        key's tokens-per-minute limit; settled to the real count when the request ends."""
        limiter, limits = self.safety.limiter, self.limits
        if limiter is None or self.key is None or limits.tpm is None:
            return
        worst = prepared.prompt_tokens + sum(
            r.sampling.max_tokens if r.sampling.max_tokens is not None
            else context_length - len(r.prompt_tokens) for r in prepared.requests)
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

    async def settle(self, tokens: int) -> None:
        """Correct the reservation to the tokens the request really used."""
        limiter = self.safety.limiter
        if self.reserved_entry is not None and limiter is not None and self.key is not None:
            await limiter.adjust(self.key.name, self.reserved_entry, tokens)

    # --- output -------------------------------------------------------------------------------
    def watches_output(self) -> bool:
        s = self.safety
        return (s.policy is not None and s.policy.applies("output")) or (
            s.classifier is not None and s.classifier.applies("output")) or s.settings.log_content

    async def stage(self, i: int, chunk: Chunk) -> Chunk:
        """Every generated chunk of choice i passes here: output policy, output judge."""
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
                             stats=chunk.stats, prompt_logprobs=chunk.prompt_logprobs)
        judged = clf is not None and clf.applies("output")
        if judged or self.safety.settings.log_content:
            self.output_text[i] = self.output_text.get(i, "") + text
        if clf is not None and judged:
            # The judge needs the whole answer: hold the choice's text until it is finished.
            if chunk.finish_reason is None:
                return Chunk(token_ids=chunk.token_ids, logprobs=chunk.logprobs,
                             prompt_logprobs=chunk.prompt_logprobs)
            full = self.output_text.get(i, "")
            assert self.judge_internal is not None
            verdict = await clf.judge(self.judge_internal, full, "output") if full else None
            if verdict is not None and verdict.violates:
                self._hits(i).add("classifier", clf.config.action)
                log.warning("request %s: output judged a violation (p=%.2f)", self.request_id,
                            verdict.p_violation)
                if clf.config.action == "block":
                    return Chunk(token_ids=chunk.token_ids, finish_reason="content_filter",
                                 stats=chunk.stats, prompt_logprobs=chunk.prompt_logprobs)
            return Chunk(text=full, token_ids=chunk.token_ids, logprobs=chunk.logprobs,
                         finish_reason=chunk.finish_reason, stats=chunk.stats,
                         prompt_logprobs=chunk.prompt_logprobs)
        if text is chunk.text:
            return chunk
        return Chunk(text=text, token_ids=chunk.token_ids, logprobs=chunk.logprobs,
                     finish_reason=chunk.finish_reason, stats=chunk.stats,
                     prompt_logprobs=chunk.prompt_logprobs)

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

    def log_output(self) -> None:
        if self.safety.settings.log_content:
            for i, text in sorted(self.output_text.items()):
                log.warning("%s %s choice %d output: %s", LOUD, self.request_id, i, text)


__all__ = ["Safety", "Screen", "LOUD", "InternalChat"]
