"""The engine contract. An engine turns a tokenized `GenerationRequest` into a stream of `Chunk`s;
everything Gemma-specific (turn format, tool syntax) happens above it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gemmakit.types import Capabilities, Chunk, EngineHealth, GenerationRequest

if TYPE_CHECKING:
    from gemmakit.catalog import ModelRef
    from gemmakit.settings import Settings


@runtime_checkable
class Engine(Protocol):
    name: str
    capabilities: Capabilities
    context_length: int
    """Tokens one sequence can hold: prompt plus completion."""
    n_vocab: int

    @classmethod
    def from_settings(cls, model: ModelRef, settings: Settings) -> Engine:
        """Load `model` (blocking; may take seconds)."""
        ...

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids, never adding BOS; `special` parses control-token markup in `text`."""
        ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Generate; the last chunk has a finish_reason and stats. Cancel the consuming task to
        cancel the generation."""
        ...

    def health(self) -> EngineHealth: ...

    async def aclose(self) -> None: ...
