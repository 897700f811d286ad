"""Adapters served by name: each one resolves to its base model's entry in the model registry,
with a pipeline of its own whose service sets the adapter on every request it prepares.

`gemmakit serve --adapters A,B` loads them at start; `POST /v1/adapters/load` / `unload` at run
time (server/routes/adapters.py). An adapter belongs to the served model whose file has the
sha256 its manifest records; one trained on another base is refused (400). Its pipeline shares
the base's safety and sinks, so keys, limits, the ledger and the metrics see the adapter's name
as the model. When the base unloads (keep-alive, eviction) and loads again, the adapter is
loaded into the new engine on its next request."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gemmakit.errors import InvalidRequestError, ModelNotFoundError, UnsupportedError
from gemmakit.finetune import store

if TYPE_CHECKING:
    from gemmakit.pipeline import Pipeline
    from gemmakit.server.models_registry import ModelEntry, ModelRegistry

log = logging.getLogger("gemmakit.server")


@dataclass
class Served:
    adapter: store.Adapter
    base: str
    """The served model it applies to (its registry name)."""
    pipelines: dict[int, Pipeline] = field(default_factory=dict)
    """By id of the base engine it is loaded into (at most one: the base's current engine)."""


class Adapters:
    def __init__(self, registry: ModelRegistry, home: Path) -> None:
        self.registry = registry
        self.home = home
        self.served: dict[str, Served] = {}
        self._sha: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def _base_sha(self, name: str) -> str | None:
        if name not in self._sha:
            path = self.registry.entries[name].spec.path
            if path is None:
                return None
            self._sha[name] = await asyncio.to_thread(store.file_sha256, path)
        return self._sha[name]

    async def base_for(self, adapter: store.Adapter, param: str) -> str:
        """The served model `adapter` was trained on; 400 when none is."""
        for name in self.registry.entries:
            if await self._base_sha(name) == adapter.base_sha256:
                return name
        served = ", ".join(f"'{n}'" for n in self.registry.entries)
        raise InvalidRequestError(
            f"The adapter '{adapter.name}' was trained on '{adapter.base_name}' (sha256 "
            f"{adapter.base_sha256[:12]}…), which this server does not serve (it serves "
            f"{served}).", param=param, code="adapter_base_mismatch")

    def serve_at_start(self, names: list[str], base_sha: dict[str, str]) -> None:
        """Register `--adapters` before the app starts (each binds to its base's engine on its
        first request, or when `preload` runs): a ConfigError for an unknown adapter or one
        whose base is not served. `base_sha`: each served model's sha256."""
        from gemmakit.errors import ConfigError

        self._sha.update(base_sha)
        for name in names:
            adapter = store.get(self.home, name)
            if name in self.registry.entries:
                raise ConfigError(f"--adapters: '{name}' is also a served model's name")
            base = next((n for n, sha in base_sha.items() if sha == adapter.base_sha256), None)
            if base is None:
                raise ConfigError(f"--adapters: '{name}' was trained on '{adapter.base_name}' "
                                  f"(sha256 {adapter.base_sha256[:12]}…), which is not served "
                                  "here")
            self.served[name] = Served(adapter, base)

    async def preload(self) -> None:
        """Bind every registered adapter to its base once the base has loaded (start-up)."""
        for name in list(self.served):
            try:
                got = await self.acquire(name)
            except Exception:
                log.exception("loading the adapter %s failed", name)
                continue
            if got is not None:
                self.registry.release(got[0], None, explicit=False)

    def stored(self, name: str) -> store.Adapter | None:
        return store.find(self.home, name)

    async def load(self, name: str, param: str = "lora_name") -> Served:
        """Load a stored adapter onto its base (loading the base if needed)."""
        adapter = self.stored(name)
        if adapter is None:
            raise ModelNotFoundError(f"No adapter named '{name}' in the store.", param=param)
        if name in self.registry.entries:
            raise InvalidRequestError(f"'{name}' is a served model's name; an adapter cannot "
                                      "take it.", param=param)
        base = await self.base_for(adapter, param)
        entry = await self.registry.acquire(base)
        try:
            async with self._lock:
                s = Served(adapter, base)
                await self._bind(s, entry)
                self.served[name] = s
        finally:
            self.registry.release(entry, None, explicit=False)
        log.info("adapter %s served on %s", name, base)
        return s

    async def unload(self, name: str) -> None:
        s = self.served.get(name)
        if s is None:
            raise ModelNotFoundError(f"The adapter '{name}' is not loaded.", param="lora_name")
        entry = self.registry.entries[s.base]
        if entry.engine is not None and id(entry.engine) in s.pipelines:
            await asyncio.to_thread(entry.engine.unload_adapter, name)
        del self.served[name]

    async def _bind(self, s: Served, entry: ModelEntry) -> Pipeline:
        from gemmakit.pipeline import Pipeline

        engine, base = entry.engine, entry.pipeline
        assert engine is not None and base is not None
        if id(engine) not in s.pipelines:
            if not engine.capabilities.lora:
                raise UnsupportedError(f"the {engine.name} engine cannot serve LoRA adapters",
                                       param="model")
            await asyncio.to_thread(engine.load_adapter, s.adapter)
            s.pipelines = {id(engine): Pipeline(base.service.for_adapter(s.adapter.name),
                                                base.safety, base.sinks)}
        return s.pipelines[id(engine)]

    async def acquire(self, name: str) -> tuple[ModelEntry, Pipeline] | None:
        """The base entry (counted in flight; release it as a model) and the adapter's pipeline,
        or None when `name` is no served adapter."""
        s = self.served.get(name)
        if s is None:
            return None
        entry = await self.registry.acquire(s.base)
        try:
            async with self._lock:
                return entry, await self._bind(s, entry)
        except BaseException:
            self.registry.release(entry, None, explicit=False)
            raise

    async def not_served(self, name: str) -> Exception | None:
        """The error for a request naming a stored adapter that is not served: 400 when its
        base is not served here, 404 (load it first) otherwise; None if no such adapter."""
        adapter = self.stored(name)
        if adapter is None:
            return None
        try:
            await self.base_for(adapter, "model")
        except InvalidRequestError as e:
            return e
        return ModelNotFoundError(f"The adapter '{name}' is not loaded on this server (POST "
                                  "/v1/adapters/load, or serve it with --adapters).",
                                  param="model")

    def cards(self) -> list[tuple[str, str]]:
        """(adapter name, parent model) of every served adapter."""
        return [(n, s.base) for n, s in self.served.items()]
