"""The usage ledger: one row per API request (key, model, token counts, status, latency) in the
SQLite store — never content. Writes go through one background thread in batches, so the event
loop never waits on the disk."""

from __future__ import annotations

import queue
import re
import sqlite3
import threading
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from gemmakit.errors import InvalidRequestError
from gemmakit.safety.store import connect, epoch_from_iso


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


_INSERT = ("INSERT INTO usage (ts, request_id, key_name, method, path, model, prompt_tokens, "
           "completion_tokens, status, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class UsageLedger:
    def __init__(self, home: Path) -> None:
        self._home = home
        self._read = connect(home)
        self._q: queue.Queue[UsageRecord | threading.Event | None] = queue.Queue()
        self._thread = threading.Thread(target=self._writer, name="gemmakit-usage", daemon=True)
        self._thread.start()

    def record(self, rec: UsageRecord) -> None:
        self._q.put(rec)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything recorded so far is on disk."""
        done = threading.Event()
        self._q.put(done)
        done.wait(timeout)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)
        self._read.close()

    def _writer(self) -> None:
        conn = connect(self._home)
        try:
            while True:
                item = self._q.get()
                batch, events, stop = [], [], False
                while True:
                    if item is None:
                        stop = True
                    elif isinstance(item, threading.Event):
                        events.append(item)
                    else:
                        batch.append(astuple(item))
                    try:
                        item = self._q.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    with conn:
                        conn.executemany(_INSERT, batch)
                for e in events:
                    e.set()
                if stop:
                    return
        finally:
            conn.close()

    # --- queries ----------------------------------------------------------------------------
    def window(self, key_name: str | None, since: float) -> dict[str, int]:
        row = self._read.execute(
            "SELECT COUNT(*) AS requests, COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, "
            "COALESCE(SUM(completion_tokens), 0) AS completion_tokens, "
            "COALESCE(SUM(status >= 400), 0) AS errors FROM usage WHERE key_name IS ? AND ts >= ?",
            (key_name, since)).fetchone()
        return dict(row)

    def summary(self, *, since: float | None = None, key_name: str | None = None
                ) -> list[dict[str, Any]]:
        return _summary(self._read, since, key_name)


def read_summary(home: Path, *, since: float | None = None, key_name: str | None = None
                 ) -> list[dict[str, Any]]:
    """The ledger summary without starting a writer (the `gemmakit usage` command)."""
    conn = connect(home)
    try:
        return _summary(conn, since, key_name)
    except sqlite3.Error as e:  # pragma: no cover - a damaged file
        raise InvalidRequestError(f"cannot read the usage ledger: {e}") from None
    finally:
        conn.close()


def _summary(conn: sqlite3.Connection, since: float | None, key_name: str | None
             ) -> list[dict[str, Any]]:
    """Per key and model: requests, errors, tokens, mean latency."""
    sql = ("SELECT key_name, model, COUNT(*) AS requests, SUM(status >= 400) AS errors, "
           "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
           "AVG(latency_ms) AS mean_latency_ms, MAX(ts) AS last_ts FROM usage WHERE ts >= ?")
    args: list[Any] = [since or 0.0]
    if key_name is not None:
        sql += " AND key_name = ?"
        args.append(key_name)
    sql += " GROUP BY key_name, model ORDER BY key_name, model"
    return [dict(r) for r in conn.execute(sql, args)]


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
