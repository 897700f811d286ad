"""The engine contract. An engine turns a tokenized `GenerationRequest` into a stream of `Chunk`s;
everything Gemma-specific (turn format, tool syntax) happens above it.

`Engine` declares every method its callers use. The abstract ones every engine must have; the
others have defaults for an engine that lacks the capability (no batching: `submit` runs each
request through `stream`; no media: `encode_media` refuses; no loading profiles: `plan_profile`
refuses), so no caller ever probes an engine with `getattr`. A third-party engine subclasses it
and registers in the `gemmakit.engines` entry-point group, exactly as the built-in ones do.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from gemmakit.errors import ConfigError, UnsupportedError
from gemmakit.media import MediaLimits
from gemmakit.profiles import ProfileRow
from gemmakit.types import Capabilities, Chunk, EngineHealth, GenerationRequest, MediaEncoding, Part

if TYPE_CHECKING:
    from pathlib import Path

    from gemmakit.catalog import ModelRef
    from gemmakit.finetune.store import Adapter
    from gemmakit.settings import Settings


class Engine(abc.ABC):
    name: ClassVar[str]
    capabilities: Capabilities = Capabilities()
    context_length: int
    """Tokens one sequence can hold: prompt plus completion."""
    n_vocab: int
    media_limits: MediaLimits = MediaLimits()
    """Limits on the media one request may carry (checked before any part is encoded)."""
    chat_template: str | None = None
    """The chat template the model file carries, if any: gemmakit renders Gemma's format itself
    and checks this template against its renderer when the model loads (compose.py)."""

    # --- loading --------------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def from_settings(cls, model: ModelRef, settings: Settings) -> Engine:
        """Load `model` (blocking; may take seconds)."""

    @classmethod
    def plan_profile(cls, model: ModelRef, profile: str) -> str:
        """What loading `model` under `profile` means on this engine (a one-line summary), or a
        ConfigError saying why it cannot be done. Called before anything loads."""
        raise ConfigError(f"the {cls.name} engine has no loading profiles")

    @classmethod
    def profile_table(cls, model: ModelRef, home: Path) -> list[ProfileRow]:
        """One row per profile for `gemmakit models --profiles`: the plan or why it is refused,
        and the weights' memory."""
        raise ConfigError(f"the {cls.name} engine has no loading profiles")

    @classmethod
    def measure_profile(cls, row: dict[str, Any], *, threads: int | None = None
                        ) -> dict[str, Any]:
        """Load one `profile_table` row's plan in a fresh process and measure it (resident
        memory, load time, decode speed): the figures to add to the row."""
        raise ConfigError(f"the {cls.name} engine cannot measure its profiles")

    # --- tokenizer ------------------------------------------------------------------------------
    @abc.abstractmethod
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids, never adding BOS; `special` parses control-token markup in `text`."""

    @abc.abstractmethod
    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of `tokens` (control tokens render as nothing)."""

    # --- media ----------------------------------------------------------------------------------
    def encode_media(self, part: Part) -> MediaEncoding:
        """The prompt tokens (and engine features) that stand for one image or audio part.
        Raises InvalidRequestError / UnsupportedError without a param (the caller names it)."""
        raise UnsupportedError(f"the {self.name} engine takes no image or audio input")

    # --- generation -----------------------------------------------------------------------------
    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Generate; the last chunk has a finish_reason and stats. Cancel the consuming task
        (or close the iterator) to cancel the generation."""

    def submit(self, requests: Sequence[GenerationRequest]) -> list[AsyncIterator[Chunk]]:
        """Admit every request at once (all or none) and return their streams. An engine with
        its own admission raises here, before any response starts, when it is full (429) or
        shutting down (503); the default defers to `stream`."""
        return [self.stream(r) for r in requests]

    async def drain(self, timeout: float) -> None:
        """Graceful shutdown: refuse new work, let running requests finish for up to `timeout`
        seconds, then end them with finish_reason "shutdown". The default has nothing queued of
        its own to wait for."""
        return None

    # --- LoRA adapters (Capabilities.lora) ------------------------------------------------------
    def load_adapter(self, adapter: Adapter) -> None:
        """Make a stored adapter (gemmakit.finetune.store) usable by requests naming it in
        `GenerationRequest.adapter` (blocking; replaces one loaded under the same name)."""
        raise UnsupportedError(f"the {self.name} engine cannot serve LoRA adapters")

    def unload_adapter(self, name: str) -> None:
        """Forget a loaded adapter (refused while requests use it)."""
        raise UnsupportedError(f"the {self.name} engine cannot serve LoRA adapters")

    def adapter_names(self) -> list[str]:
        """The adapters loaded now."""
        return []

    @abc.abstractmethod
    def health(self) -> EngineHealth: ...

    def health_detail(self) -> dict[str, Any]:
        """Engine-specific state added to GET /health (the remote engine: each upstream's);
        the default adds nothing."""
        return {}

    def metric_families(self) -> Iterable[Any]:
        """Prometheus metric families of the engine's own (prometheus_client `Metric`s),
        collected with the server's at each scrape; the default has none."""
        return ()

    @abc.abstractmethod
    async def aclose(self) -> None: ...
