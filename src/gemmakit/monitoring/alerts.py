"""Threshold alerts over sliding windows, delivered to the log and, optionally, a webhook.

An alert fires once when its condition starts and resolves once when it ends. Evaluation and
delivery run in background tasks: a slow or dead webhook delays only other webhook deliveries
(bounded queue, timeout, retries with back-off), never a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gemmakit.monitoring.config import AlertRule, MonitoringSettings
from gemmakit.monitoring.window import RequestWindow

log = logging.getLogger("gemmakit.alerts")

_QUEUE_LIMIT = 1000  # undelivered webhook events kept; older ones are dropped (and logged)


@dataclass
class AlertState:
    rule: AlertRule
    firing: bool = False
    since: float | None = None  # wall-clock time it started firing
    value: float | None = None  # the metric at the last evaluation

    @property
    def threshold(self) -> float:
        return self.rule.above if self.rule.above is not None else self.rule.below  # type: ignore[return-value]

    @property
    def comparison(self) -> str:
        return "above" if self.rule.above is not None else "below"

    def breached(self, value: float | None) -> bool:
        if value is None:  # no data in the window: nothing to alert on
            return False
        if self.rule.above is not None:
            return value > self.rule.above
        return value < self.rule.below  # type: ignore[operator]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.rule.name, "metric": self.rule.metric, "value": self.value,
                "threshold": self.threshold, "comparison": self.comparison,
                "window_seconds": self.rule.window_seconds, "firing": self.firing,
                "since": self.since}


class AlertManager:
    """Evaluates every rule against the request window and live gauges."""

    def __init__(self, settings: MonitoringSettings, window: RequestWindow, *, model: str,
                 gauges: Callable[[], dict[str, float | None]],
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.window = window
        self.model = model
        self.gauges = gauges  # memory_rss_bytes, queue_depth: values now
        self.wall_clock = wall_clock
        self.states = [AlertState(r) for r in settings.alerts]
        self.history: deque[dict[str, Any]] = deque(maxlen=200)
        self._outbox: asyncio.Queue[dict[str, Any]] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- evaluation ---------------------------------------------------------------------------
    def value(self, rule: AlertRule, gauges: dict[str, float | None]) -> float | None:
        if rule.metric in gauges:
            return gauges[rule.metric]
        summary = self.window.summary(rule.window_seconds)
        return getattr(summary, rule.metric)

    def evaluate(self) -> list[dict[str, Any]]:
        """Evaluate every rule once; return (and deliver) the events of state changes."""
        gauges = self.gauges()
        events = []
        for st in self.states:
            st.value = self.value(st.rule, gauges)
            breached = st.breached(st.value)
            if breached == st.firing:
                continue
            now = self.wall_clock()
            event = {"status": "firing" if breached else "resolved", "alert": st.rule.name,
                     "metric": st.rule.metric, "value": st.value, "threshold": st.threshold,
                     "comparison": st.comparison, "window_seconds": st.rule.window_seconds,
                     "model": self.model, "started_at": now if breached else st.since,
                     "resolved_at": None if breached else now}
            st.firing, st.since = breached, (now if breached else None)
            if breached:
                log.warning("alert %s firing: %s = %s (%s %s over %g s)", st.rule.name,
                            st.rule.metric, st.value, st.comparison, st.threshold,
                            st.rule.window_seconds)
            else:
                log.info("alert %s resolved: %s = %s", st.rule.name, st.rule.metric, st.value)
            self.history.append(event)
            events.append(event)
            self._deliver(event)
        return events

    def active(self) -> list[dict[str, Any]]:
        return [st.as_dict() for st in self.states if st.firing]

    # --- background tasks ---------------------------------------------------------------------
    def start(self) -> None:
        self._outbox = asyncio.Queue(maxsize=_QUEUE_LIMIT)
        self._tasks.append(asyncio.create_task(self._evaluate_loop(), name="gemmakit-alerts"))
        if self.settings.webhook is not None:
            self._tasks.append(asyncio.create_task(self._send_loop(), name="gemmakit-webhook"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    async def _evaluate_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.evaluate_every_seconds)
            try:
                self.evaluate()
            except Exception:  # a monitoring bug must not stop monitoring
                log.exception("alert evaluation failed")

    def _deliver(self, event: dict[str, Any]) -> None:
        if self._outbox is None or self.settings.webhook is None:
            return
        if self._outbox.full():
            dropped = self._outbox.get_nowait()
            log.error("alert webhook backlog full: dropped the %s event of %s",
                      dropped["status"], dropped["alert"])
        self._outbox.put_nowait(event)

    async def _send_loop(self) -> None:
        import httpx

        assert self._outbox is not None
        url = str(self.settings.webhook)
        async with httpx.AsyncClient(timeout=self.settings.webhook_timeout_seconds) as client:
            while True:
                event = await self._outbox.get()
                await self._post(client, url, event)

    async def _post(self, client: Any, url: str, event: dict[str, Any]) -> None:
        import httpx

        attempts = 1 + self.settings.webhook_retries
        for attempt in range(attempts):
            try:
                r = await client.post(url, json=event)
                if r.status_code < 300:
                    return
                problem = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                problem = type(e).__name__
            if attempt + 1 < attempts:
                await asyncio.sleep(0.5 * 2**attempt)
        log.error("alert webhook gave up on the %s event of %s after %d attempts (%s)",
                  event["status"], event["alert"], attempts, problem)
