"""The models one server serves: which are loaded, loading on demand, idle unloading and eviction.

Each served model is a `ModelEntry` (unloaded -> loading -> loaded, or failed). A request routes
by its `model`: `acquire` hands back the loaded entry, loading it first when it is not resident
(the request waits for the load; concurrent requests for the same model share that one load),
and counts the request in flight until `release`. Loads run one at a time, so the resident-memory
growth each one measures is its own.

Room for a load is made by evicting idle models, least recently used first, while either limit
would be exceeded: `max_loaded` models, or `budget_bytes` of their memory (the catalog's estimate
of each, `ModelSpec.memory_bytes`; a model without one counts by its measured growth once
loaded). A model with requests in flight, or loading, is never evicted; when nothing can be, the
request gets 503 with Retry-After. A model idle for its keep-alive unloads (Ollama's `keep_alive`:
the last request's own, else the server's `--keep-alive`; 0 unloads right after the request,
negative or none keeps it loaded).

Nothing here knows HTTP: the routes map its errors (gemmakit.errors) to responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gemmakit.errors import (
    ConfigError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
)

if TYPE_CHECKING:
    from gemmakit.engines.base import Engine
    from gemmakit.pipeline import Pipeline
    from gemmakit.server.adapters import Adapters
    from gemmakit.service import Service
    from gemmakit.settings import Settings

log = logging.getLogger("gemmakit.server")

State = Literal["unloaded", "loading", "loaded", "failed"]
RETRY_AFTER_S = 1

# --- keep_alive durations, as Ollama reads them ---------------------------------------------
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
           "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: Any) -> float | None:
    """Seconds from a keep_alive value; None means "keep loaded" (a negative duration).

    Takes what Ollama takes: a number of seconds (JSON number or digits), or a Go duration
    string ("5m", "30s", "1h30m", "250ms", "-1m"). 0 means unload right after the request.
    Raises ValueError with the reason otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be a duration such as \"5m\" or a number of seconds, "
                         f"not {type(value).__name__}")
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)  # digits alone: seconds (as OLLAMA_KEEP_ALIVE reads them)
        except ValueError:
            sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text.lstrip("+"))
            parts = _PART.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"'{value[:40]}' is not a duration (for example \"5m\", "
                                 f"\"30s\", \"1h\", \"-1\" for ever, 0 to unload)") from None
            seconds = sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError("must be a finite duration (a negative one keeps the model loaded)")
    return None if seconds < 0 else seconds


def keep_alive_param(value: Any) -> float | None:
    """A request's keep_alive: seconds, None for "keep loaded"; a 400 on `keep_alive` if bad."""
    try:
        return parse_duration(value)
    except ValueError as e:
        raise InvalidRequestError(f"keep_alive {e}.", param="keep_alive") from None


# --- model specs and entries ----------------------------------------------------------------
@dataclass
class ModelSpec:
    """One model to serve, decided before anything loads."""

    name: str
    """The id the API reports and requests name."""
    load: Callable[[], Engine]
    """Loads the engine (blocking; run in a worker thread)."""
    settings: Settings
    """The settings this model loads and is served with (its context, --parallel)."""
    memory_bytes: int | None = None
    """The catalog's estimate of its memory once loaded (None where it cannot be made)."""
    path: Path | None = None
    """Its model file or folder: an adapter's base is recognised by its sha256."""


@dataclass
class ModelEntry:
    spec: ModelSpec
    state: State = "unloaded"
    engine: Engine | None = None
    pipeline: Pipeline | None = None
    load_error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    in_flight: int = 0
    used: int = 0
    """The registry's tick at its last acquire or release: eviction takes the lowest first."""
    keep_alive_s: float | None = None
    """How long it stays loaded once idle (None: for ever), from its last request."""
    expires_at: float | None = None
    """Wall-clock time it unloads if still idle; None while in use or kept for ever."""
    loaded_at: float | None = None
    measured_bytes: int | None = None
    """Resident-memory growth of the process while it loaded (None before; loads run one at a
    time, so it is this model's own)."""
    load_seconds: float | None = None
    loads: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def size_bytes(self) -> int:
        """What it counts against the memory budget: the estimate, else what it measured."""
        if self.spec.memory_bytes is not None:
            return self.spec.memory_bytes
        return self.measured_bytes or 0

    @property
    def resident(self) -> bool:
        return self.state in ("loading", "loaded")

    @property
    def context_length(self) -> int | None:
        if self.engine is not None:
            return self.engine.context_length
        return self.spec.settings.context_length

    @property
    def slots(self) -> int:
        """Sequences decoded together (--parallel; 1 on an engine without batching)."""
        if self.engine is not None and not self.engine.capabilities.batching:
            return 1
        return self.spec.settings.parallel

    def status(self) -> dict[str, Any]:
        """Its state as `/v1/models/{id}` and `/api/ps` report it."""
        h = self.engine.health() if self.engine is not None else None
        return {"state": self.state, "size": self.size_bytes if self.resident else 0,
                "memory_estimate_bytes": self.spec.memory_bytes,
                "measured_rss_delta_bytes": self.measured_bytes,
                "context_length": self.context_length, "slots": self.slots,
                "engine": self.engine.name if self.engine is not None else
                self.spec.settings.engine,
                "requests_in_flight": self.in_flight,
                "requests_running": h.requests_running if h else 0,
                "requests_waiting": h.requests_waiting if h else 0,
                "keep_alive_seconds": self.keep_alive_s,
                "expires_at": _iso(self.expires_at) if self.state == "loaded" else None,
                "loaded_at": _iso(self.loaded_at) if self.resident else None,
                "load_seconds": self.load_seconds}


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class ModelRegistry:
    """The served models (see the module docstring). Its first model is what a single-model
    server's `Runtime` was: `model_name`, `engine`, `pipeline`, `load_error` stay readable."""

    def __init__(self, specs: Sequence[ModelSpec],
                 build: Callable[[ModelSpec, Engine], Pipeline], *,
                 max_loaded: int | None = None, budget_bytes: int | None = None,
                 keep_alive: float | None = None, wall: Callable[[], float] = time.time,
                 rss: Callable[[], int] = rss_bytes) -> None:
        if not specs:
            raise ConfigError("no model to serve")
        names = [s.name for s in specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"two models are served as '{dup[0]}'; name them apart with "
                              "--model NAME=MODEL")
        for s in specs:
            if budget_bytes is not None and s.memory_bytes is not None \
                    and s.memory_bytes > budget_bytes:
                raise ConfigError(f"{s.name} alone needs about {s.memory_bytes / 1e6:.0f} MB, "
                                  f"more than --max-memory ({budget_bytes / 1e6:.0f} MB)")
        self.entries: dict[str, ModelEntry] = {
            s.name: ModelEntry(s, keep_alive_s=keep_alive) for s in specs}
        self.build = build
        self.max_loaded = max_loaded
        self.budget_bytes = budget_bytes
        self.keep_alive = keep_alive
        self.wall = wall
        self.rss = rss
        self.draining = False
        """Set on SIGTERM/SIGINT: new requests get 503 while in-flight ones finish."""
        self.starting = False
        """True while the models loaded at start-up are loading."""
        self._tick = 0
        self._lock = asyncio.Lock()  # decisions: what loads, what is evicted
        self._load_lock = asyncio.Lock()  # one load at a time
        self._start_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.adapters: Adapters | None = None
        """The LoRA adapters served on these models (server/adapters.py), set by the app."""

    # --- what a single-model server's Runtime offered --------------------------------------
    @property
    def first(self) -> ModelEntry:
        return next(iter(self.entries.values()))

    @property
    def model_name(self) -> str:
        return self.first.name

    @property
    def created(self) -> int:
        return self.first.created

    @property
    def engine(self) -> Engine | None:
        return self.first.engine

    @property
    def pipeline(self) -> Pipeline | None:
        return self.first.pipeline

    @property
    def service(self) -> Service | None:
        return self.pipeline.service if self.pipeline is not None else None

    @property
    def load_error(self) -> str | None:
        return self.first.load_error

    # --- reading ----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> ModelEntry | None:
        return self.entries.get(name)

    def loaded(self) -> list[ModelEntry]:
        return [e for e in self.entries.values() if e.state == "loaded"]

    def resident_bytes(self) -> int:
        return sum(e.size_bytes for e in self.entries.values() if e.resident)

    # --- start-up and shutdown ----------------------------------------------------------------
    def start(self) -> None:
        """Load, in order, the models that fit the limits together (the first always, as a
        single-model server does); the rest load on their first request."""
        self.starting = True
        self._start_task = asyncio.create_task(self._preload())

    async def _preload(self) -> None:
        try:
            count, total = 0, 0
            chosen: list[ModelEntry] = []
            for e in self.entries.values():
                if chosen and ((self.max_loaded is not None and count >= self.max_loaded) or
                               (self.budget_bytes is not None
                                and total + e.size_bytes > self.budget_bytes)):
                    continue
                chosen.append(e)
                count, total = count + 1, total + e.size_bytes
            for e in chosen:
                async with self._lock:
                    if e.state == "unloaded":
                        self._begin_load(e)
                task = e.task
                if task is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(task)
        finally:
            self.starting = False

    async def drain(self, timeout: float) -> None:
        """Stop taking requests; let every loaded engine finish its requests (up to `timeout`
        seconds, then they end with finish_reason "shutdown")."""
        self.draining = True
        for e in self.entries.values():
            self._cancel_timer(e)
        await asyncio.gather(*(e.engine.drain(timeout) for e in self.entries.values()
                               if e.engine is not None))

    async def aclose(self) -> None:
        """Close every engine (the app's shutdown)."""
        self.draining = True
        tasks = [t for t in (self._start_task, *(e.task for e in self.entries.values()))
                 if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        for e in self.entries.values():
            self._cancel_timer(e)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        engines = [e.engine for e in self.entries.values() if e.engine is not None]
        for e in self.entries.values():
            e.engine = e.pipeline = None
            if e.state != "failed":
                e.state = "unloaded"
        await asyncio.gather(*(eng.aclose() for eng in engines), return_exceptions=True)

    # --- requests -----------------------------------------------------------------------------
    def unknown(self, name: str) -> ModelNotFoundError:
        served = ", ".join(f"'{n}'" for n in self.entries)
        return ModelNotFoundError(f"The model '{name}' does not exist; this server serves "
                                  f"{served}.", param="model")

    async def acquire(self, name: str) -> ModelEntry:
        """The loaded entry for `name`, counted in flight until `release`: loaded first if it
        is not (waiting for the load). 404 for a model not served, 503 with Retry-After while
        draining, when its load failed, or when no room can be made."""
        if self.draining:
            raise ServiceUnavailableError("The server is shutting down; retry on another replica.",
                                          headers={"Retry-After": "5"})
        e = self.entries.get(name)
        if e is None:
            raise self.unknown(name)
        async with self._lock:
            if e.state == "failed":
                raise ServiceUnavailableError(
                    f"The model '{name}' failed to load; see the server log."
                    if len(self.entries) > 1 else "The model failed to load; see the server log.",
                    headers={"Retry-After": str(RETRY_AFTER_S)})
            if e.state == "unloaded":
                await self._make_room(e)
                self._begin_load(e)
            e.in_flight += 1
            self._touch(e)
            task = e.task
        if e.state == "loading" and task is not None:
            try:
                await asyncio.shield(task)  # a cancelled request leaves the shared load alone
            except BaseException:
                self.release(e, None, explicit=False)
                raise
            if e.state != "loaded":
                self.release(e, None, explicit=False)
                raise ServiceUnavailableError(
                    f"The model '{name}' failed to load; see the server log.",
                    headers={"Retry-After": str(RETRY_AFTER_S)})
        return e

    def acquire_loaded(self, name: str) -> ModelEntry | None:
        """The entry if it is loaded now, counted in flight (no load) but not as a use: for
        probes, which neither refresh its keep-alive nor its place in the eviction order.
        Release it with `release_probe`."""
        e = self.entries.get(name)
        if e is None or e.state != "loaded" or self.draining:
            return None
        e.in_flight += 1
        return e

    def release_probe(self, e: ModelEntry) -> None:
        e.in_flight = max(0, e.in_flight - 1)
        if e.in_flight or e.state != "loaded" or self.draining or e.expires_at is None:
            return
        # Its expiry passed while the probe held it: unload now.
        remaining = max(0.0, e.expires_at - self.wall())
        if remaining == 0.0:
            self._cancel_timer(e)
            e.timer = asyncio.get_running_loop().call_later(0, self._expire, e, e.used)

    def release(self, e: ModelEntry, keep_alive: float | None, *, explicit: bool) -> None:
        """A request on `e` has ended. `keep_alive` (seconds; None for ever) is the request's
        own when `explicit`, else the server's default applies."""
        e.in_flight = max(0, e.in_flight - 1)
        self._touch(e)
        e.keep_alive_s = keep_alive if explicit else self.keep_alive
        if e.in_flight or e.state != "loaded" or self.draining:
            return
        self._schedule_expiry(e)

    # --- loading, unloading, eviction ---------------------------------------------------------
    def _touch(self, e: ModelEntry) -> None:
        self._tick += 1
        e.used = self._tick
        e.expires_at = None
        self._cancel_timer(e)

    def _begin_load(self, e: ModelEntry) -> None:
        e.state = "loading"
        e.load_error = None
        e.task = asyncio.create_task(self._load(e))

    async def _load(self, e: ModelEntry) -> None:
        async with self._load_lock:
            t0, rss0 = time.perf_counter(), self.rss()
            try:
                engine = await asyncio.to_thread(e.spec.load)
            except Exception as err:
                e.state, e.load_error = "failed", type(err).__name__
                log.exception("loading the model %s failed", e.name)
                return
            try:
                pipeline = self.build(e.spec, engine)
            except Exception as err:
                e.state, e.load_error = "failed", type(err).__name__
                log.exception("loading the model %s failed", e.name)
                await engine.aclose()
                return
            e.engine, e.pipeline, e.state = engine, pipeline, "loaded"
            e.measured_bytes = max(0, self.rss() - rss0)
            e.load_seconds = time.perf_counter() - t0
            e.loaded_at = self.wall()
            e.loads += 1
        log.info("model %s loaded in %.2f s (engine %s, context %d tokens)", e.name,
                 e.load_seconds, engine.name, engine.context_length)
        if e.in_flight == 0 and not self.draining:
            self._schedule_expiry(e)

    def _over(self, e: ModelEntry) -> str | None:
        """Which limit loading `e` now would exceed (None: neither)."""
        resident = [x for x in self.entries.values() if x.resident]
        if self.max_loaded is not None and len(resident) >= self.max_loaded:
            return f"--max-loaded-models {self.max_loaded}"
        if self.budget_bytes is not None and \
                sum(x.size_bytes for x in resident) + e.size_bytes > self.budget_bytes:
            return f"--max-memory {self.budget_bytes / 1e6:.0f} MB"
        return None

    async def _make_room(self, e: ModelEntry) -> None:
        """Evict idle loaded models, least recently used first, until `e` fits (under the lock)."""
        while (limit := self._over(e)) is not None:
            idle = [x for x in self.entries.values() if x.state == "loaded" and x.in_flight == 0]
            if not idle:
                busy = [x.name for x in self.entries.values() if x.resident]
                raise ServiceUnavailableError(
                    f"Cannot load the model '{e.name}' now: {limit} is reached and every loaded "
                    f"model ({', '.join(busy)}) has requests in flight or is loading; retry "
                    "shortly.", headers={"Retry-After": str(RETRY_AFTER_S)})
            victim = min(idle, key=lambda x: x.used)
            log.info("unloading %s (least recently used) to make room for %s (%s)",
                     victim.name, e.name, limit)
            await self._unload(victim)

    async def _unload(self, e: ModelEntry) -> None:
        engine = e.engine
        e.state, e.engine, e.pipeline, e.expires_at = "unloaded", None, None, None
        self._cancel_timer(e)
        if engine is not None:
            await engine.aclose()

    def _cancel_timer(self, e: ModelEntry) -> None:
        if e.timer is not None:
            e.timer.cancel()
            e.timer = None

    def _schedule_expiry(self, e: ModelEntry) -> None:
        self._cancel_timer(e)
        keep = e.keep_alive_s
        if keep is None:
            e.expires_at = None
            return
        e.expires_at = self.wall() + keep
        tick = e.used
        e.timer = asyncio.get_running_loop().call_later(keep, self._expire, e, tick)

    def _expire(self, e: ModelEntry, tick: int) -> None:
        task = asyncio.get_running_loop().create_task(self._expire_now(e, tick))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _expire_now(self, e: ModelEntry, tick: int) -> None:
        async with self._lock:
            # Unused since the timer was set, idle and loaded: its keep-alive has run out.
            if e.used == tick and e.in_flight == 0 and e.state == "loaded" and not self.draining:
                log.info("unloading %s: idle for its keep-alive (%s s)", e.name, e.keep_alive_s)
                await self._unload(e)

    # --- status -------------------------------------------------------------------------------
    def ps(self) -> list[dict[str, Any]]:
        """The resident models, most recently used first (as `ollama ps` lists them)."""
        return [{"name": e.name, **e.status()}
                for e in sorted(self.entries.values(), key=lambda x: -x.used) if e.resident]
