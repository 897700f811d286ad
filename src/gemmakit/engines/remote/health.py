"""Active health checks: every `interval` seconds each upstream's `/health` (falling back to
`/v1/models` where there is none) is asked, with its key. A success closes a half-open breaker
(and teaches the gateway an upstream's kind and model if it did not answer at start-up); a failure
or timeout counts like a failed request. Closed breakers are not closed by a check alone: a
request that failed counts until a request or check succeeds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from gemmakit.engines.remote.upstreams import Upstream

log = logging.getLogger("gemmakit.engine.remote")


def probe_sync(up: Upstream, timeout: float) -> None:
    """Learn an upstream's kind, model and context at start-up (blocking; an upstream that does
    not answer is learnt later by the health checks)."""
    import httpx

    try:
        with httpx.Client(timeout=timeout, headers=up.headers()) as client:
            r = client.get(f"{up.url}/v1/models")
            r.raise_for_status()
            props = up.kind is None and client.get(f"{up.url}/props").status_code == 200
            up.learn(r.json(), props_ok=props)
            up.checked = True
    except Exception as e:
        up.last_error = f"{type(e).__name__}: {e}"
        log.warning("upstream %s did not answer at start-up (%s); it stays out of rotation until "
                    "a health check succeeds", up.name, up.last_error)


async def check(client: Any, up: Upstream, timeout: float) -> bool:
    """One active check of `up`; its breaker updated. True if it answered."""
    try:
        if not up.known:
            r = await client.get(f"{up.url}/v1/models", headers=up.headers(), timeout=timeout)
            r.raise_for_status()
            props = False
            if up.kind is None:
                p = await client.get(f"{up.url}/props", headers=up.headers(), timeout=timeout)
                props = p.status_code == 200
            up.learn(r.json(), props_ok=props)
            if up.known:
                log.info("upstream %s: %s serving %s", up.name, up.kind, up.model)
        else:
            r = await client.get(f"{up.url}/health", headers=up.headers(), timeout=timeout)
            if r.status_code == 404:
                r = await client.get(f"{up.url}/v1/models", headers=up.headers(),
                                     timeout=timeout)
            r.raise_for_status()
    except Exception as e:
        up.last_error = f"health check: {type(e).__name__}: {e}".rstrip(": ")
        was = up.breaker.state
        up.breaker.failure()
        if was == "closed" and up.breaker.state != "closed":
            log.warning("upstream %s ejected (%s)", up.name, up.last_error)
        return False
    up.checked = True
    if up.breaker.state == "half_open" and not up.breaker.trial:
        log.info("upstream %s answers its health check again: back in rotation", up.name)
        up.breaker.success()
    return True


class HealthChecker:
    def __init__(self, upstreams: Sequence[Upstream], interval: float, timeout: float) -> None:
        self.upstreams = list(upstreams)
        self.interval = interval
        self.timeout = timeout
        self._task: asyncio.Task | None = None

    def start(self, client: Any) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(client))

    async def _run(self, client: Any) -> None:
        while True:
            await asyncio.gather(*(check(client, u, self.timeout) for u in self.upstreams),
                                 return_exceptions=True)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
