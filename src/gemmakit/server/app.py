"""The FastAPI application, built from settings.

The server listens at once and loads the model in the background: `/health` answers 503 until the
engine is ready, and model routes answer 503 with `Retry-After` meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gemmakit.compose import build_pipeline
from gemmakit.engines.base import Engine
from gemmakit.errors import PayloadTooLargeError
from gemmakit.monitoring import monitor as monitoring
from gemmakit.pipeline import Pipeline, Sink
from gemmakit.safety.layer import Safety
from gemmakit.server import errors
from gemmakit.server.errors import gemmakit_error_body, internal_error_body
from gemmakit.server.guard import Guard
from gemmakit.server.routes import chat, completions, health, models, tokenizer, usage
from gemmakit.server.routes.common import PIPELINE_ROUTE
from gemmakit.server.streaming import dumps
from gemmakit.service import Service
from gemmakit.settings import Settings

log = logging.getLogger("gemmakit.server")


@dataclass
class Runtime:
    """What the routes see: the served model's name and, once loaded, its engine and the
    request pipeline every generation goes through."""

    model_name: str
    created: int = field(default_factory=lambda: int(time.time()))
    engine: Engine | None = None
    pipeline: Pipeline | None = None
    load_error: str | None = None
    draining: bool = False
    """Set on SIGTERM/SIGINT: new requests get 503 while in-flight ones finish."""

    @property
    def service(self) -> Service | None:
        return self.pipeline.service if self.pipeline is not None else None


async def drain(app: FastAPI, timeout: float) -> None:
    """Graceful shutdown: stop taking requests (503 + Retry-After, /health 503), let in-flight
    requests finish for up to `timeout` seconds, then end them with finish_reason "shutdown" —
    every stream still gets its final event and [DONE]."""
    runtime: Runtime = app.state.runtime
    runtime.draining = True
    if runtime.engine is not None:
        await runtime.engine.drain(timeout)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already-read body once, then waits on the real one (for the
    client's disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RequestContext:
    """Pure ASGI middleware: a request id on every request and response, and a body size limit
    (413) enforced while the body is read, before any handler parses it."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = f"req-{uuid.uuid4().hex[:16]}"
        scope.setdefault("state", {})["request_id"] = rid
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._too_large(send, rid)
        # Read the whole body here (the JSON handlers need all of it anyway), counting as we go.
        body, more = bytearray(), True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await self._too_large(send, rid)

        # Later layers (the guard hashes and logs it) take the body from here, not again.
        scope["state"]["body"] = bytes(body)

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, replaying(bytes(body), receive), send_with_id)
        except Exception:
            # Anything no handler mapped: log it here, answer with the request id only.
            log.exception("request %s failed with an internal error", rid)
            if not started:
                await self._send_json(send, 500, internal_error_body(rid), rid)

    async def _too_large(self, send: Send, rid: str) -> None:
        e = PayloadTooLargeError(f"The request body is larger than the limit of "
                                 f"{self.max_body_bytes} bytes.")
        await self._send_json(send, e.status, gemmakit_error_body(e), rid, close=True)

    @staticmethod
    async def _send_json(send: Send, status: int, body: dict[str, Any], rid: str,
                         close: bool = False) -> None:
        payload = dumps(body).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(payload)).encode()), (b"x-request-id", rid.encode())]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def create_app(model_name: str, load_engine: Callable[[], Engine],
               settings: Settings | None = None, **overrides: Any) -> FastAPI:
    """Build the app. `load_engine` is called in a worker thread after the server starts.
    Without `settings`, they are loaded (environment, defaults) with `overrides` on top."""
    settings = settings if settings is not None else Settings.load(**overrides)
    runtime = Runtime(model_name=model_name)
    safety = Safety.from_settings(settings)
    sinks: list[Sink] = [safety]

    async def load() -> None:
        t0 = time.perf_counter()
        try:
            engine = await asyncio.to_thread(load_engine)
            runtime.pipeline = build_pipeline(engine, model_name, settings, safety=safety,
                                              sinks=sinks)
            runtime.engine = engine
        except Exception as e:
            runtime.load_error = type(e).__name__
            log.exception("loading the model failed")
            return
        log.info("model %s loaded in %.2f s (engine %s, context %d tokens)", model_name,
                 time.perf_counter() - t0, engine.name, engine.context_length)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(load())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if runtime.engine is not None:
                await runtime.engine.aclose()
            await safety.aclose()

    app = FastAPI(title="gemmakit", summary="OpenAI-compatible server for Gemma models",
                  lifespan=lifespan)
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.safety = safety
    errors.install(app)
    for r in (chat.router, completions.router, models.router, health.router, usage.router,
              tokenizer.router):
        app.include_router(r)
    from gemmakit.server.routes import audio  # needs python-multipart (the server extra)

    app.include_router(audio.router)
    sinks.append(monitoring.install(app, runtime, settings.monitoring))
    app.state.pipeline_paths = pipeline_paths(app)
    # Middleware, innermost first: Guard (keys, request-rate limits, header limit) inside
    # RequestContext (request id, body limit), which every other layer relies on.
    app.add_middleware(Guard, safety=safety, sinks=sinks,
                       generation_paths=lambda: app.state.pipeline_paths,
                       model=lambda: runtime.model_name)
    app.add_middleware(RequestContext, max_body_bytes=settings.max_body_bytes)
    return app


def pipeline_paths(app: FastAPI) -> frozenset[str]:
    """The paths of the routes that go through the request pipeline: their operations carry
    the PIPELINE_ROUTE mark in the app's OpenAPI description."""
    return frozenset(path for path, ops in app.openapi()["paths"].items()
                     if any(op.get(PIPELINE_ROUTE) for op in ops.values()))


def app_from_settings(settings: Settings) -> FastAPI:
    """The app for `gemmakit serve`: resolve the model (assembling the bundled one if needed) and
    check its profile now, load the engine in the background."""
    from gemmakit.compose import plan

    p = plan(settings)  # with --fit, p.settings hold the planned context and parallel
    return create_app(p.served_name, p.load_engine, p.settings)
