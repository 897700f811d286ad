"""Where requests are observed: one ASGI middleware around the generation endpoints and one
subclass of the service that sees every chunk those endpoints stream.

The middleware knows the HTTP status (refusals and validation failures included) and the
end-to-end time; the service knows the prompt tokens and every chunk. They meet in a
`RequestObservation` carried by a context variable, so nothing in the routes has to change and the
token counts are the very numbers the routes put in `usage`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gemmakit.service import Prepared, Service
from gemmakit.types import Chunk, ChunkStats

log = logging.getLogger("gemmakit.monitoring")

# Routes whose requests are generation requests (counted in gemmakit_requests_total).
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
CLIENT_CLOSED = 499  # nginx's code for "the client went away before the answer was complete"


@dataclass
class RequestObservation:
    t0: float = field(default_factory=time.perf_counter)
    reached_engine: bool = False
    prompt_tokens: int = 0
    generation_tokens: int = 0
    sequences: list[ChunkStats] = field(default_factory=list)
    stream_error_status: int | None = None  # an error raised after the response had started
    cancelled: bool = False


current: contextvars.ContextVar[RequestObservation | None] = contextvars.ContextVar(
    "gemmakit_request_observation", default=None)


class ObservedService(Service):
    """The service, reporting what it streams to the current request's observation."""

    on_sequence: Callable[[ChunkStats], None] | None = None

    async def stream(self, prepared: Prepared, streams: list[AsyncIterator[Chunk]] | None = None
                     ) -> AsyncIterator[tuple[int, Chunk]]:
        obs = current.get()
        if obs is None:  # not an HTTP generation request (e.g. the readiness probe)
            async for item in super().stream(prepared, streams):
                yield item
            return
        started = False
        try:
            async for i, chunk in super().stream(prepared, streams):
                if not started:
                    # The engine has taken the prompt: from here its tokens count (a request
                    # refused or failed before this point processed none).
                    started = obs.reached_engine = True
                    obs.prompt_tokens += prepared.prompt_tokens
                obs.generation_tokens += len(chunk.token_ids)
                if chunk.finish_reason is not None and chunk.stats is not None:
                    obs.sequences.append(chunk.stats)
                    if self.on_sequence is not None:
                        self.on_sequence(chunk.stats)
                yield i, chunk
        except (asyncio.CancelledError, GeneratorExit):
            obs.cancelled = True
            raise
        except Exception as e:
            obs.stream_error_status = getattr(e, "status", 500)
            raise


class ObservingMiddleware:
    """Pure ASGI middleware: times generation requests and reports each one when its last byte
    has been sent (or the client went away). Everything else passes straight through."""

    def __init__(self, app: ASGIApp, report: Callable[[int, RequestObservation], None]) -> None:
        self.app = app
        self.report = report

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] not in GENERATION_PATHS
                or scope["method"] != "POST"):
            return await self.app(scope, receive, send)
        obs = RequestObservation()
        token = current.set(obs)
        status: int | None = None

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except asyncio.CancelledError:
            obs.cancelled = True
            raise
        except Exception:
            status = status or 500  # the outer middleware answers 500 for anything unmapped
            raise
        finally:
            current.reset(token)
            if obs.stream_error_status is not None:
                final = obs.stream_error_status  # the stream ended with an error event
            elif obs.cancelled:
                final = CLIENT_CLOSED
            else:
                final = status or CLIENT_CLOSED
            try:
                self.report(final, obs)
            except Exception:  # monitoring observes; it must never fail a request
                log.exception("recording request metrics failed")
