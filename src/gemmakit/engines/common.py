"""Per-request plumbing the built-in engines share: the context check a request passes before it
takes a slot, the turning of sampled tokens into streamed text with a finish reason, and the
statistics of a finished sequence."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gemmakit.errors import ContextLengthExceededError
from gemmakit.text import StopMatcher, Utf8Stream
from gemmakit.types import (
    Chunk,
    ChunkStats,
    FinishReason,
    GenerationRequest,
    TokenLogprob,
    TopLogprob,
)


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
    """How many tokens `request` may generate: its max_tokens (0: it only scores its prompt), or
    all the room its context leaves.
    Raises ContextLengthExceededError when the prompt, or the prompt plus max_tokens, cannot fit:
    nothing is ever truncated."""
    n_prompt = len(request.prompt_tokens)
    room = context_length - n_prompt
    max_tokens = room if request.sampling.max_tokens is None else request.sampling.max_tokens
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


_SPLIT = None  # two threads for the log-sum-exp of a chunk (numpy ufuncs release the GIL)


def _pool():
    global _SPLIT
    if _SPLIT is None:
        from concurrent.futures import ThreadPoolExecutor

        _SPLIT = ThreadPoolExecutor(2, thread_name_prefix="gemmakit-score")
    return _SPLIT


def scored_tokens(logits: np.ndarray, targets: Sequence[int], top_n: int,
                  piece: Callable[[int], bytes], *, in_place: bool = False
                  ) -> list[TokenLogprob]:
    """Each target token's log-probability under the raw distribution of its row of `logits`
    (shape (len(targets), n_vocab)), with the `top_n` most likely tokens of the row: the prompt
    logprobs of a scored (echoed) prompt, row k predicting targets[k]. With `in_place` the rows
    are overwritten (they are the engine's own buffer, not needed afterwards): no 64 MB copy."""
    rows = np.asarray(logits, dtype=np.float32)
    k = len(targets)
    if k == 0:
        return []
    at = np.arange(k)
    if top_n == 1:
        best = rows.argmax(axis=1)
        m = rows[at, best]
    else:
        m = rows.max(axis=1)
    raw = rows[at, np.asarray(targets)].astype(np.float64)
    if top_n == 0:
        top = np.empty((k, 0), dtype=np.int64)
    elif top_n == 1:
        top = best[:, None]
    else:
        part = np.argpartition(-rows, top_n, axis=1)[:, :top_n]
        order = np.argsort(-np.take_along_axis(rows, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
    top_raw = np.take_along_axis(rows, top, axis=1).astype(np.float64)
    buf = rows if in_place and rows.flags.writeable else np.empty_like(rows)
    # exp without shifting by the row maximum where that cannot overflow or lose the maximum
    # (262144 * e^60 < 3.4e38): one pass less over 1 MB a row
    shift = not (-80.0 < m.min() and m.max() < 60.0)

    def lse(lo: int, hi: int) -> np.ndarray:
        if shift:
            np.subtract(rows[lo:hi], m[lo:hi, None], out=buf[lo:hi])
            np.exp(buf[lo:hi], out=buf[lo:hi])
        else:
            np.exp(rows[lo:hi], out=buf[lo:hi])
        total = np.log(buf[lo:hi].sum(axis=1).astype(np.float64))  # float32 sum: ~1e-6
        return total + m[lo:hi] if shift else total

    if k >= 16:
        half = k // 2
        a, b = _pool().map(lse, (0, half), (half, k))
        norm = np.concatenate([a, b])
    else:
        norm = lse(0, k)
    chosen = raw - norm
    alt = top_raw - norm[:, None]

    def entry(tok: int, logprob: float) -> TopLogprob:
        b = piece(tok)
        return TopLogprob(b.decode("utf-8", "replace"), logprob, list(b))

    out = []
    for r, t in enumerate(targets):
        e = entry(int(t), float(chosen[r]))
        alts = tuple(entry(int(a), float(alt[r, j])) for j, a in enumerate(top[r]))
        out.append(TokenLogprob(e.token, e.logprob, e.bytes, alts))
    return out
