"""The FastAPI application, built from settings.

The server listens at once and loads the model in the background: `/health` answers 503 until the
engine is ready, and model routes answer 503 with `Retry-After` meanwhile. With several models
(server/models_registry.py) the ones that fit the limits together load at start, the others on
their first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
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
from gemmakit.server.models_registry import ModelRegistry, ModelSpec, parse_duration
from gemmakit.server.routes import adapters as adapters_routes
from gemmakit.server.routes import chat, completions, health, models, ps, responses, tokenizer, usage
from gemmakit.server.routes.common import PIPELINE_ROUTE
from gemmakit.server.streaming import dumps
from gemmakit.settings import Settings

log = logging.getLogger("gemmakit.server")


async def drain(app: FastAPI, timeout: float) -> None:
    """Graceful shutdown: stop taking requests (503 + Retry-After, /health 503), let in-flight
    requests finish for up to `timeout` seconds, then end them with finish_reason "shutdown" —
    every stream still gets its final event and [DONE]. Every loaded model drains."""
    registry: ModelRegistry = app.state.runtime
    await registry.drain(timeout)


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
        finally:
            # The models this request used are idle again once its response is sent (their
            # keep-alive starts now): routes/common.py registers the releases.
            for release in scope["state"].pop("releases", ()):
                release()

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
    """Build the app serving one model. `load_engine` is called in a worker thread after the
    server starts. Without `settings`, they are loaded (environment, defaults) with `overrides`
    on top."""
    settings = settings if settings is not None else Settings.load(**overrides)
    return create_models_app([ModelSpec(model_name, load_engine, settings)], settings)


def create_models_app(specs: Sequence[ModelSpec], settings: Settings,
                      adapters: Sequence[str] = ()) -> FastAPI:
    """Build the app serving `specs` (server/models_registry.py): the models that fit the
    limits together load in the background at start, the rest on their first request.
    `adapters`: stored LoRA adapters served by name on their base (server/adapters.py)."""
    from gemmakit.catalog.fit import parse_bytes

    safety = Safety.from_settings(settings)
    sinks: list[Sink] = [safety]

    def build(spec: ModelSpec, engine: Engine) -> Pipeline:
        return build_pipeline(engine, spec.name, spec.settings, safety=safety, sinks=sinks)

    runtime = ModelRegistry(
        specs, build, max_loaded=settings.max_loaded_models,
        budget_bytes=parse_bytes(settings.max_memory) if settings.max_memory else None,
        keep_alive=parse_duration(settings.keep_alive) if settings.keep_alive else None)
    from gemmakit.server.adapters import Adapters

    served_adapters = runtime.adapters = Adapters(runtime, settings.home)
    if adapters:
        from gemmakit.finetune.store import file_sha256

        runtime.adapters.serve_at_start(list(adapters), {
            s.name: file_sha256(s.path) for s in specs if s.path is not None})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        preload = asyncio.create_task(served_adapters.preload()) if adapters else None
        try:
            yield
        finally:
            if preload is not None:
                preload.cancel()
            await runtime.aclose()
            await safety.aclose()

    app = FastAPI(title="gemmakit", summary="OpenAI-compatible server for Gemma models",
                  lifespan=lifespan)
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.safety = safety
    errors.install(app)
    for r in (chat.router, completions.router, models.router, health.router, usage.router,
              tokenizer.router, ps.router, responses.router, adapters_routes.router):
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


def app_from_settings(settings: Settings, adapters: Sequence[str] = ()) -> FastAPI:
    """The app for `gemmakit serve`: resolve the models (assembling the bundled one if needed) and
    check their profiles now, load the engines in the background."""
    from gemmakit.compose import plan_all

    # One plan per --model; with --fit, each plan's settings hold its context and parallel.
    plans = plan_all(settings)
    specs = [ModelSpec(p.served_name, p.load_engine, p.settings, memory_bytes=p.memory_bytes(),
                       path=p.model.path) for p in plans]
    return create_models_app(specs, plans[0].settings if len(plans) == 1 else settings,
                             adapters)
