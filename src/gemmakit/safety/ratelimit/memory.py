"""In-process sliding-window store (the default): exact, for one server process."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from gemmakit.safety.ratelimit import WINDOW_S, Decision, Limits


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)   # arrival times, oldest first
    tokens: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)  # entry -> [t, n]
    token_sum: float = 0.0

    def prune(self, now: float) -> None:
        cutoff = now - WINDOW_S
        while self.requests and self.requests[0] <= cutoff:
            self.requests.popleft()
        while self.tokens:
            entry, (t, n) = next(iter(self.tokens.items()))
            if t > cutoff:
                break
            self.tokens.popitem(last=False)
            self.token_sum -= n


class MemoryStore:
    def __init__(self, url: str = "memory", clock=time.monotonic) -> None:
        self._windows: dict[str, _Window] = {}
        self._clock = clock

    async def acquire(self, key: str, limits: Limits, *, entry: str, requests: int = 0,
                      tokens: int = 0) -> Decision:
        return self.acquire_now(key, limits, entry=entry, requests=requests, tokens=tokens)

    def acquire_now(self, key: str, limits: Limits, *, entry: str, requests: int = 0,
                    tokens: int = 0) -> Decision:
        # Synchronous and without awaits: atomic on the event loop.
        now = self._clock()
        w = self._windows.setdefault(key, _Window())
        w.prune(now)
        if limits.tpm is not None and tokens > limits.tpm:
            return self._decision(w, limits, now, False, retry=None, too_large=True)
        if limits.rpm is not None and requests and len(w.requests) + requests > limits.rpm:
            idx = len(w.requests) + requests - limits.rpm - 1  # the slot that must expire first
            return self._decision(w, limits, now, False, retry=w.requests[idx] + WINDOW_S - now)
        if limits.tpm is not None and tokens and w.token_sum + tokens > limits.tpm:
            need, retry = w.token_sum + tokens - limits.tpm, 0.0
            for t, n in w.tokens.values():
                need -= n
                retry = t + WINDOW_S - now
                if need <= 0:
                    break
            return self._decision(w, limits, now, False, retry=retry)
        for _ in range(requests):
            w.requests.append(now)
        if tokens:
            w.tokens[entry] = [now, float(tokens)]
            w.token_sum += tokens
        return self._decision(w, limits, now, True)

    async def adjust(self, key: str, entry: str, tokens: int) -> None:
        w = self._windows.get(key)
        if w is None or entry not in w.tokens:
            return  # already out of the window: nothing to correct
        w.token_sum += tokens - w.tokens[entry][1]
        w.tokens[entry][1] = float(tokens)

    @staticmethod
    def _decision(w: _Window, limits: Limits, now: float, allowed: bool,
                  retry: float | None = 0.0, too_large: bool = False) -> Decision:
        last_t = next(reversed(w.tokens.values()))[0] if w.tokens else now - WINDOW_S
        return Decision(
            allowed=allowed,
            remaining_requests=(limits.rpm - len(w.requests)) if limits.rpm is not None else None,
            reset_requests_s=max(0.0, (w.requests[-1] + WINDOW_S - now) if w.requests else 0.0),
            remaining_tokens=(int(limits.tpm - w.token_sum)) if limits.tpm is not None else None,
            reset_tokens_s=max(0.0, last_t + WINDOW_S - now),
            retry_after_s=max(0.0, retry) if retry is not None else 0.0,
            too_large=too_large)

    async def aclose(self) -> None:
        self._windows.clear()
