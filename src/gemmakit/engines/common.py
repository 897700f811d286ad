"""Per-request plumbing the built-in engines share: the context check a request passes before it
takes a slot, the turning of sampled tokens into streamed text with a finish reason, and the
statistics of a finished sequence."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gemmakit.errors import ContextLengthExceededError
from gemmakit.text import StopMatcher, Utf8Stream
from gemmakit.types import Chunk, ChunkStats, FinishReason, GenerationRequest


@dataclass(eq=False)
class Pending:
    """A submitted request as an engine's worker thread sees it: where its chunks go (a queue on
    the consumer's event loop), its token budget, and `cancelled`, set from the event loop."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    max_tokens: int
    cancelled: bool = False
    t_submit: float = field(default_factory=time.perf_counter)

    def emit(self, item: Chunk | BaseException) -> None:
        emit_threadsafe(self.loop, self.out, item)


def generation_budget(request: GenerationRequest, context_length: int) -> int:
    """How many tokens `request` may generate: its max_tokens, or all the room its context leaves.
    Raises ContextLengthExceededError when the prompt, or the prompt plus max_tokens, cannot fit:
    nothing is ever truncated."""
    n_prompt = len(request.prompt_tokens)
    room = context_length - n_prompt
    max_tokens = request.sampling.max_tokens or room
    if n_prompt == 0 or room <= 0 or max_tokens > room:
        raise ContextLengthExceededError(prompt_tokens=n_prompt,
                                         max_tokens=request.sampling.max_tokens,
                                         context_length=context_length)
    return max_tokens


class TokenText:
    """Sampled tokens to streamed text and a finish reason. Bytes are decoded incrementally (a
    character split across tokens is held until it is whole), stop strings are matched across
    token boundaries and never emitted, and the max_tokens budget ends with "length"."""

    def __init__(self, stop: Sequence[str], max_tokens: int) -> None:
        self._utf8 = Utf8Stream()
        self._stops = StopMatcher(stop)
        self.max_tokens = max_tokens
        self.count = 0  # tokens fed

    def feed(self, piece: bytes | None) -> tuple[str, FinishReason | None]:
        """One sampled token: its bytes, or None for an end-of-generation or stop token (which
        has no text and ends the sequence)."""
        self.count += 1
        stops = self._stops
        finish: FinishReason | None = None
        if piece is None:
            finish = "stop"
            text = stops.feed(self._utf8.flush())
        else:
            text = stops.feed(self._utf8.feed(piece))
            if stops.matched is None and self.count >= self.max_tokens:
                finish = "length"
                text += stops.feed(self._utf8.flush())
        if stops.matched is not None:
            finish = "stop"
        elif finish is not None:
            text += stops.flush()  # a held-back partial match was ordinary text after all
        return text, finish

    def close(self) -> str:
        """The text still held back, for a sequence ended from outside (shutdown)."""
        text = self._stops.feed(self._utf8.flush())
        return text + self._stops.flush()


def finish_stats(*, prompt_tokens: int, completion_tokens: int, t_submit: float, t_start: float,
                 t_first: float | None, now: float, cached_prompt_tokens: int = 0) -> ChunkStats:
    """The statistics a sequence's last chunk carries (times from time.perf_counter)."""
    first = t_first if t_first is not None else now
    decode_s = now - first
    return ChunkStats(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_prompt_tokens=cached_prompt_tokens,
        time_to_first_token_s=first - t_submit if t_first is not None else None,
        decode_tokens_per_s=(completion_tokens - 1) / decode_s if decode_s > 0 else None,
        queue_time_s=(t_start or now) - t_submit,
    )


def emit_threadsafe(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue,
                    item: Chunk | BaseException) -> None:
    """Hand `item` from a worker thread to a consumer's queue on its event loop."""
    with contextlib.suppress(RuntimeError):  # the consumer's event loop is already closed
        loop.call_soon_threadsafe(queue.put_nowait, item)
