"""A sliding window of finished requests: what alerts and the dashboard compute their figures from.

Prometheus histograms answer "since the process started"; alerts need "over the last N seconds",
exactly, without a Prometheus server in between. Records are small and pruned past the longest
window anyone asks for.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# Client mistakes do not make the service unhealthy; refusals (429) and server errors do.
_CLIENT_ERRORS = frozenset({400, 401, 403, 404, 405, 413, 415, 422})


@dataclass(frozen=True)
class RequestRecord:
    """One finished generation request (all its choices)."""

    t: float  # monotonic time it finished
    status: int
    e2e_s: float
    prompt_tokens: int = 0
    generation_tokens: int = 0
    ttft_s: tuple[float, ...] = ()  # per sequence (choice)
    decode_tokens_per_s: tuple[float, ...] = ()  # per sequence with at least two tokens

    @property
    def counts_for_success(self) -> bool:
        return self.status not in _CLIENT_ERRORS

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): a value that was actually observed."""
    xs = sorted(values)
    if not xs:
        return None
    k = max(0, math.ceil(q / 100 * len(xs)) - 1)
    return xs[k]


@dataclass
class RequestWindow:
    max_seconds: float = 3600.0
    clock: Callable[[], float] = time.monotonic
    _records: deque[RequestRecord] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)
            self._prune(record.t)

    def _prune(self, now: float) -> None:
        while self._records and self._records[0].t < now - self.max_seconds:
            self._records.popleft()

    def recent(self, seconds: float, now: float | None = None) -> list[RequestRecord]:
        now = self.clock() if now is None else now
        with self._lock:
            self._prune(now)
            return [r for r in self._records if r.t >= now - seconds]

    def summary(self, seconds: float, now: float | None = None) -> WindowSummary:
        return WindowSummary.of(self.recent(seconds, now), seconds)


@dataclass(frozen=True)
class WindowSummary:
    """Figures over one window. `None` means "no data" (an alert on it cannot fire)."""

    window_seconds: float
    requests: int
    request_rate: float  # requests per second
    success_rate: float | None
    ttft_p50_seconds: float | None
    ttft_p95_seconds: float | None
    e2e_p50_seconds: float | None
    e2e_p95_seconds: float | None
    tokens_per_second_avg: float | None  # mean decode speed of the sequences finished
    generation_tokens_per_second: float  # throughput: generated tokens / window
    status_counts: dict[str, int]

    @classmethod
    def of(cls, records: list[RequestRecord], seconds: float) -> WindowSummary:
        judged = [r for r in records if r.counts_for_success]
        ok = [r for r in records if r.ok]
        ttft = [x for r in ok for x in r.ttft_s]
        tps = [x for r in ok for x in r.decode_tokens_per_s]
        e2e = [r.e2e_s for r in ok]
        counts: dict[str, int] = {}
        for r in records:
            counts[str(r.status)] = counts.get(str(r.status), 0) + 1
        return cls(
            window_seconds=seconds,
            requests=len(records),
            request_rate=len(records) / seconds,
            success_rate=sum(r.ok for r in judged) / len(judged) if judged else None,
            ttft_p50_seconds=percentile(ttft, 50),
            ttft_p95_seconds=percentile(ttft, 95),
            e2e_p50_seconds=percentile(e2e, 50),
            e2e_p95_seconds=percentile(e2e, 95),
            tokens_per_second_avg=sum(tps) / len(tps) if tps else None,
            generation_tokens_per_second=sum(r.generation_tokens for r in records) / seconds,
            status_counts=counts,
        )
