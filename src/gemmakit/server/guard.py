"""The edge of the HTTP path: only what must be ASGI (DESIGN: the ASGI layer keeps
authentication, request-rate limits, header and body limits). `Guard` is pure ASGI middleware,
inside `RequestContext` (which gives the request id and bounds the body). Per request it:
- refuses oversized headers (431);
- on protected paths (every `/v1/*` and `/admin/*` route, and `/metrics` with --metrics-auth)
  requires an API key (401) and a free RPM slot (429), and hands the key to the routes;
- adds the `x-ratelimit-*` headers to the response;
- books a request the pipeline never took (refused here, a body that did not parse, a route
  that is not a generation) in the same sinks the pipeline books its runs in, and writes one
  access-log line per request with the request id and a short hash of the body (never the
  content).

Everything else — validation, content policy, token reservation, the ledger and metrics of a
generation — happens in the request pipeline (`gemmakit.pipeline`), which every generation route
goes through.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gemmakit.errors import ServiceUnavailableError
from gemmakit.pipeline import CLIENT_CLOSED, Caller, Finished, Sink
from gemmakit.safety.auth import ApiKey, AuthenticationError, secret_from_headers
from gemmakit.safety.layer import LOUD, TOKENIZER_PATHS, Safety
from gemmakit.safety.ratelimit import Decision, Limits, RateLimitError, headers_for
from gemmakit.safety.store import StoreUnavailableError
from gemmakit.server.errors import error_body, gemmakit_error_body
from gemmakit.server.streaming import dumps

if TYPE_CHECKING:
    from gemmakit.pipeline import Run

log = logging.getLogger("gemmakit.access")


class Guard:
    """Pure ASGI middleware; see the module docstring. `generation_paths()` names the routes
    that go through the pipeline (whose refusals here still count as generation requests)."""

    def __init__(self, app: ASGIApp, safety: Safety, sinks: Sequence[Sink],
                 generation_paths: Callable[[], Collection[str]], model: Callable[[], str]
                 ) -> None:
        self.app = app
        self.safety = safety
        self.sinks = sinks
        self.generation_paths = generation_paths
        self.model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        rid = state.get("request_id", "-")
        s = self.safety
        raw_headers = scope.get("headers") or []
        t0 = state.setdefault("t0", time.perf_counter())
        path, method = scope["path"], scope["method"]
        status = CLIENT_CLOSED
        decision: Decision | None = None
        key: ApiKey | None = None

        async def send_with_limits(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                run: Run | None = state.get("run")
                d = run.screen.decision if run is not None and run.screen is not None \
                    and run.screen.decision is not None else decision
                if key is not None and d is not None:
                    message["headers"] = [*message.get("headers", []),
                                          *headers_for(_limits(key), d)]
            await send(message)

        try:
            if sum(len(k) + len(v) + 4 for k, v in raw_headers) > s.settings.max_header_bytes:
                return await _send_error(send_with_limits, 431, error_body(
                    f"The request headers are larger than the limit of "
                    f"{s.settings.max_header_bytes} bytes.", "invalid_request_error", None,
                    "request_header_fields_too_large"))
            if s.needs_key(path):
                try:
                    key = await s.keys.admit(secret_from_headers(dict(raw_headers))) \
                        if s.keys is not None else None
                except AuthenticationError as e:
                    return await _send_error(send_with_limits, 401, gemmakit_error_body(e),
                                             {"www-authenticate": "Bearer"})
                except StoreUnavailableError as e:  # PostgreSQL unreachable: 503, not 500
                    return await _send_error(send_with_limits, 503, gemmakit_error_body(e),
                                             {"retry-after": "1"})
                if key is not None:
                    state["key"] = key
                    try:
                        decision = await self._admit_rpm(rid, key)
                    except ServiceUnavailableError as e:  # Redis unreachable: 503, not 500
                        return await _send_error(send_with_limits, 503, gemmakit_error_body(e),
                                                 {"retry-after": "1"})
                    if decision is not None and not decision.allowed:
                        err = RateLimitError(
                            f"Rate limit reached: {key.rpm} requests per minute for this key. "
                            f"Retry after {decision.retry_after_s:.1f} s.",
                            decision.retry_after_s)
                        return await _send_error(send_with_limits, 429,
                                                 gemmakit_error_body(err), err.headers)
            await self.app(scope, receive, send_with_limits)
        finally:
            await self._finish(state, rid, key, method, path, status, t0)

    async def _admit_rpm(self, rid: str, key: ApiKey) -> Decision | None:
        limiter, limits = self.safety.limiter, _limits(key)
        if limiter is None or limits.unlimited:
            return None
        return await limiter.acquire(key.name, limits, entry=f"{rid}:req",
                                     requests=1 if key.rpm is not None else 0)

    async def _finish(self, state: dict[str, Any], rid: str, key: ApiKey | None, method: str,
                      path: str, status: int, t0: float) -> None:
        run: Run | None = state.get("run")
        body: bytes = state.get("body", b"")
        if run is not None:
            await run.close(status)  # a run its route left unfinished is booked now
            prompt, completion = run.prompt_tokens, run.completion_tokens
            model: str | None = run.model_name
        else:
            prompt = completion = 0
            generation = path in self.generation_paths()
            model = self.model() if generation else None
            if path.startswith("/v1/") or path in TOKENIZER_PATHS:
                f = Finished(Caller(rid, path, method, key, t0), model, status,
                             time.perf_counter() - t0, 0, 0, False, [], generation=generation)
                for sink in self.sinks:
                    try:
                        await sink.book(f)
                    except Exception:
                        log.exception("request %s: booking it failed", rid)
        log.info("%s %s %s status=%d key=%s model=%s prompt_tokens=%d completion_tokens=%d "
                 "latency_ms=%.0f body=sha256:%s", rid, method, path, status,
                 key.name if key is not None else "-", model or "-", prompt, completion,
                 (time.perf_counter() - t0) * 1000, hashlib.sha256(body).hexdigest()[:12])
        if self.safety.settings.log_content:
            log.warning("%s %s request body: %s", LOUD, rid, body.decode("utf-8", "replace"))


def _limits(key: ApiKey) -> Limits:
    return Limits(key.rpm, key.tpm)


async def _send_error(send: Send, status: int, payload: dict[str, Any],
                      extra: dict[str, str] | None = None) -> None:
    data = dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


__all__ = ["Guard"]
