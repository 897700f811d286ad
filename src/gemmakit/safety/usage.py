"""The usage ledger: one row per API request (key, model, token counts, status, latency) in the
state store (`gemmakit.safety.store`: SQLite, or PostgreSQL shared by replicas) — never content.
Writes go through one background thread in batches, so the event loop never waits on the disk or
the network; a batch the store cannot take (PostgreSQL unreachable) is kept and retried."""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from gemmakit.errors import InvalidRequestError
from gemmakit.safety.store import (
    StateStore,
    StoreUnavailableError,
    UsageRow,
    epoch_from_iso,
    open_state_store,
)

log = logging.getLogger("gemmakit.usage")

_RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0)  # back-off while the store is unavailable


@dataclass(frozen=True)
class UsageRecord:
    ts: float
    request_id: str
    key_name: str | None
    method: str
    path: str
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    status: int
    latency_ms: float


def _owned(source: StateStore | Path | str) -> tuple[StateStore, bool]:
    if isinstance(source, (Path, str)):
        return open_state_store(None, source), True
    return source, False


class UsageLedger:
    """The ledger over a `StateStore`, or a data directory (its SQLite file). A store passed in
    is shared and stays open on `close()`."""

    def __init__(self, source: StateStore | Path | str) -> None:
        self.store, self._owned = _owned(source)
        self._q: queue.Queue[UsageRecord | threading.Event | None] = queue.Queue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._writer, name="gemmakit-usage", daemon=True)
        self._thread.start()

    def record(self, rec: UsageRecord) -> None:
        self._q.put(rec)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything recorded so far is in the store."""
        done = threading.Event()
        self._q.put(done)
        done.wait(timeout)

    def close(self) -> None:
        self._closing.set()
        self._q.put(None)
        self._thread.join(timeout=10)
        if self._owned:
            self.store.close()

    def _writer(self) -> None:
        pending: list[UsageRow] = []
        stop = False
        while not stop:
            item = self._q.get()
            events = []
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    events.append(item)
                else:
                    pending.append(astuple(item))
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            pending = self._write(pending)
            for e in events:
                e.set()
        if pending:
            log.error("usage ledger: %d rows not written: the store %s is unavailable",
                      len(pending), self.store.name)

    def _write(self, rows: list[UsageRow]) -> list[UsageRow]:
        """Write `rows`; while the store is unavailable, retry with back-off (rows stay queued,
        in order) until the ledger closes, which gets one last try. Returns what is unwritten."""
        attempt = 0
        while rows:
            try:
                self.store.insert_usage(rows)
                return []
            except StoreUnavailableError as e:
                if attempt == 0:
                    log.warning("usage ledger: %d rows waiting, the store is unavailable (%s)",
                                len(rows), e.detail)
                if self._closing.is_set() and attempt > 0:
                    return rows
                self._closing.wait(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
                attempt += 1
        return rows

    # --- queries ----------------------------------------------------------------------------
    def window(self, key_name: str | None, since: float) -> dict[str, int]:
        return self.store.usage_window(key_name, since)

    def summary(self, *, since: float | None = None, key_name: str | None = None
                ) -> list[dict[str, Any]]:
        return self.store.usage_summary(since=since, key_name=key_name)


def read_summary(source: StateStore | Path | str, *, since: float | None = None,
                 key_name: str | None = None) -> list[dict[str, Any]]:
    """The ledger summary without starting a writer (the `gemmakit usage` command): from a
    store, or from the SQLite file of a data directory."""
    store, owned = _owned(source)
    try:
        return store.usage_summary(since=since, key_name=key_name)
    finally:
        if owned:
            store.close()


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: float | None = None) -> float:
    """`90m`, `24h`, `7d`, `1h30m` (ago) or an ISO date / date-time (UTC unless zoned)."""
    now = now or time.time()
    text = value.strip().lower()
    if _DURATION.fullmatch(text) or re.fullmatch(r"(?:\d+(?:\.\d+)?[smhdw])+", text):
        return now - sum(float(n) * _UNIT_S[u] for n, u in _DURATION.findall(text))
    try:
        return epoch_from_iso(value)
    except ValueError:
        raise InvalidRequestError(f"--since: '{value}' is neither a duration (90m, 24h, 7d) nor "
                                  "an ISO date", param="since") from None
