"""The monitor of one served model: metrics, the request window, alerts and readiness, wired into
the app by `install` (middleware, routes, start and stop with the app's lifespan)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from gemmakit.monitoring.alerts import AlertManager
from gemmakit.monitoring.config import MonitoringSettings
from gemmakit.monitoring.metrics import Metrics
from gemmakit.monitoring.readiness import ReadinessProbe
from gemmakit.monitoring.window import RequestRecord, RequestWindow
from gemmakit.types import EngineHealth

if TYPE_CHECKING:
    from fastapi import FastAPI

    from gemmakit.pipeline import Finished


def memory() -> dict[str, Any]:
    """This process's resident memory and the machine's, in bytes."""
    import psutil

    vm = psutil.virtual_memory()
    return {"rss_bytes": psutil.Process().memory_info().rss, "total_bytes": vm.total,
            "available_bytes": vm.available}


class Monitor:
    def __init__(self, runtime: Any, settings: MonitoringSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.started = time.time()
        self.metrics = Metrics(runtime.names, self.engine_healths, self.engines)
        self.window = RequestWindow(max_seconds=max(
            [settings.window_max_seconds, *(r.window_seconds for r in settings.alerts)]))
        self.alerts = AlertManager(settings, self.window, model=runtime.model_name,
                                   gauges=self.gauges)
        self.readiness = ReadinessProbe(settings)

    def engine_healths(self) -> dict[str, EngineHealth | None]:
        """Each served model's engine health; None while it is not loaded."""
        return {e.name: e.engine.health() if e.engine is not None else None
                for e in self.runtime.entries.values()}

    def engines(self) -> list[Any]:
        """The loaded engines (whose own metric families are collected with ours)."""
        return [e.engine for e in self.runtime.entries.values() if e.engine is not None]

    def engine_health(self) -> EngineHealth | None:
        """The loaded engines' health together (None: no model loaded)."""
        hs = [h for h in self.engine_healths().values() if h is not None]
        if not hs:
            return None
        ratios = [h.kv_cache_usage_ratio for h in hs if h.kv_cache_usage_ratio is not None]
        return EngineHealth(ok=all(h.ok for h in hs),
                            detail="; ".join(h.detail for h in hs if h.detail),
                            requests_running=sum(h.requests_running for h in hs),
                            requests_waiting=sum(h.requests_waiting for h in hs),
                            kv_cache_usage_ratio=max(ratios) if ratios else None)

    def gauges(self) -> dict[str, float | None]:
        h = self.engine_health()
        return {"memory_rss_bytes": float(memory()["rss_bytes"]),
                "queue_depth": float(h.requests_waiting) if h is not None else None}

    async def book(self, f: Finished) -> None:
        """A finished request (a pipeline sink; the edge books refusals the same way)."""
        if not f.generation:
            return
        if f.internal is not None:
            self.metrics.observe_internal(f.internal, f.status, f.prompt_tokens,
                                          f.completion_tokens, f.model)
            return
        for stats in f.sequences:
            self.metrics.observe_sequence(stats, f.model)
        self.metrics.observe_request(f.status, f.latency_s, f.prompt_tokens,
                                     f.completion_tokens, f.reached_engine, f.model)
        for kind in f.schema_failures:
            self.metrics.observe_schema_failure(kind, f.model)
        self.window.add(RequestRecord(
            t=self.window.clock(), status=f.status, e2e_s=f.latency_s,
            prompt_tokens=f.prompt_tokens, generation_tokens=f.completion_tokens,
            ttft_s=tuple(s.time_to_first_token_s for s in f.sequences
                         if s.time_to_first_token_s is not None),
            decode_tokens_per_s=tuple(s.decode_tokens_per_s for s in f.sequences
                                      if s.decode_tokens_per_s and s.completion_tokens > 1)))

    def summary(self, window_seconds: float) -> dict[str, Any]:
        """Live figures for the dashboard."""
        h = self.engine_health()
        uptime = time.time() - self.started
        # A window longer than the server has run covers only the uptime: rates divide by that.
        span = max(1e-3, min(window_seconds, uptime))
        return {
            "model": self.runtime.model_name, "time": time.time(), "uptime_seconds": uptime,
            "loaded": any(e.engine is not None for e in self.runtime.entries.values()),
            **vars(self.window.summary(span)),
            "requests_running": h.requests_running if h else 0,
            "requests_waiting": h.requests_waiting if h else 0,
            "kv_cache_usage_ratio": h.kv_cache_usage_ratio if h else None,
            "memory": memory(),
            "alerts": self.alerts.active(),
        }


def install(app: FastAPI, runtime: Any, settings: MonitoringSettings) -> Monitor:
    """Attach monitoring to the app: routes, background alert evaluation. Requests reach it as
    a sink of the request pipeline (and of the edge, for requests it refuses)."""
    from gemmakit.server.routes import monitoring as routes

    monitor = Monitor(runtime, settings)
    app.state.monitor = monitor
    app.include_router(routes.router)
    routes.mount_dashboard(app)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        monitor.alerts.start()
        try:
            async with inner(a) as state:
                yield state
        finally:
            await monitor.alerts.stop()

    app.router.lifespan_context = lifespan
    return monitor
