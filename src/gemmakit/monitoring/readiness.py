"""Readiness: a real one-token generation, answered within a threshold, cached.

`healthy` — the probe answered within `ready_threshold_seconds`; `degraded` — it answered, but
slower (or the engine reports a problem it can serve through); `unhealthy` — the probe failed or
took longer than `ready_timeout_seconds`, or the model is not loaded. One probe runs at a time and
its result is reused for `ready_cache_seconds`, so hammering /ready cannot load the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gemmakit.monitoring.config import MonitoringSettings
from gemmakit.types import SamplingParams

if TYPE_CHECKING:
    from gemmakit.pipeline import Pipeline

Status = Literal["healthy", "degraded", "unhealthy"]
_PROBE_PROMPT = "Hello"


@dataclass
class ProbeResult:
    status: Status
    latency_s: float | None
    checked_at: float  # wall clock
    checked_mono: float
    errors: list[str] = field(default_factory=list)


class ReadinessProbe:
    def __init__(self, settings: MonitoringSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._last: ProbeResult | None = None
        self._running: asyncio.Task[ProbeResult] | None = None
        self.probes_run = 0

    async def check(self, pipeline: Pipeline) -> ProbeResult:
        last = self._last
        fresh = self.settings.ready_cache_seconds
        if last is not None and self.clock() - last.checked_mono < fresh:
            return last
        if self._running is None or self._running.done():
            # Its own task: a client that hangs up cannot cancel a probe others wait for.
            self._running = asyncio.create_task(self._probe(pipeline))
        return await asyncio.shield(self._running)

    async def _probe(self, pipeline: Pipeline) -> ProbeResult:
        """One probe: an internal generation (counted apart from user traffic)."""
        self.probes_run += 1
        s = self.settings
        errors: list[str] = []
        t0 = self.clock()
        latency: float | None = None
        status: Status
        try:
            answer = await asyncio.wait_for(pipeline.internal_completion(
                "readiness", _PROBE_PROMPT, SamplingParams(max_tokens=1, temperature=0.0)),
                s.ready_timeout_seconds)
            latency = self.clock() - t0
            if len(answer.token_ids) < 1:
                status = "unhealthy"
                errors.append("the probe generated no token")
            elif latency > s.ready_threshold_seconds:
                status = "degraded"
                errors.append(f"probe took {latency:.3f} s (threshold "
                              f"{s.ready_threshold_seconds:g} s)")
            else:
                status = "healthy"
        except TimeoutError:
            status = "unhealthy"
            errors.append(f"probe not answered within {s.ready_timeout_seconds:g} s")
        except Exception as e:
            status = "unhealthy"
            errors.append(f"probe failed: {getattr(e, 'message', type(e).__name__)}")
        health = pipeline.engine.health()
        if not health.ok:
            status = "unhealthy"
            errors.append(f"engine: {health.detail or 'not ok'}")
        result = ProbeResult(status, latency, time.time(), self.clock(), errors)
        self._last = result
        return result


def ready_body(result: ProbeResult, model: str, memory: dict[str, Any],
               alerts: list[dict[str, Any]], now: float) -> dict[str, Any]:
    return {"status": result.status, "model": model,
            "probe_latency_seconds": result.latency_s, "checked_at": result.checked_at,
            "age_seconds": max(0.0, now - result.checked_mono), "memory": memory,
            "errors": result.errors, "alerts_firing": [a["name"] for a in alerts]}
