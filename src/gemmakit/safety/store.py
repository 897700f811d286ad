"""The embedded state store: one SQLite file under the data directory (`GEMMAKIT_HOME`) holding
API keys and the usage ledger. Several processes may share it (WAL mode, busy timeout)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id           TEXT PRIMARY KEY,           -- public key id, also the secret's prefix
    name         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,              -- sha256 hex of the whole secret
    rpm          INTEGER,
    tpm          INTEGER,
    models       TEXT,                       -- comma-separated; NULL: every model
    expires_at   REAL,
    created_at   REAL NOT NULL,
    last_used_at REAL,
    revoked_at   REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys(name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS usage (
    ts                REAL NOT NULL,
    request_id        TEXT NOT NULL,
    key_name          TEXT,                  -- NULL when the server runs without --auth
    method            TEXT NOT NULL,
    path              TEXT NOT NULL,
    model             TEXT,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    status            INTEGER NOT NULL,
    latency_ms        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_key_ts ON usage(key_name, ts);
"""


def db_path(home: Path) -> Path:
    return Path(home) / "gemmakit.sqlite3"


def connect(home: Path) -> sqlite3.Connection:
    """A connection to the store, creating it (mode 0600: it holds key hashes) if needed."""
    path = db_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.touch(mode=0o600)
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.executescript(SCHEMA)
    return conn


def epoch_from_iso(value: str) -> float:
    """An ISO date (`2027-01-31`) or date-time, UTC unless it names a zone, as the epoch seconds
    the store keeps. Raises ValueError for anything else."""
    dt = datetime.fromisoformat(value.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
