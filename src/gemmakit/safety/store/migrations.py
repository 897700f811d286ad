"""The store's schema as numbered migrations, the same for every backend (only column types
differ). A store applies, on open and inside one exclusive transaction, every migration whose
version is not yet in its `gemmakit_migrations` table, and records each one it applied.

Rules: a migration, once released, never changes; a change to the schema is a new migration at the
end. Version 1 uses `IF NOT EXISTS` so a SQLite file written before migrations existed (the same
tables, no `gemmakit_migrations`) is adopted as version 1 without losing a row.
"""

from __future__ import annotations

from dataclasses import dataclass

TABLE = "gemmakit_migrations"

# Column types per dialect: epoch seconds are floats (REAL is 8 bytes in SQLite).
TYPES = {
    "sqlite": {"real": "REAL"},
    "postgresql": {"real": "DOUBLE PRECISION"},
}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    """SQL with `{real}` for the dialect's float type; one statement per item."""

    def sql(self, dialect: str) -> list[str]:
        return [s.format(**TYPES[dialect]) for s in self.statements]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "api keys and the usage ledger", (
        """CREATE TABLE IF NOT EXISTS api_keys (
            id           TEXT PRIMARY KEY,           -- public key id, also the secret's prefix
            name         TEXT NOT NULL,
            secret_hash  TEXT NOT NULL,              -- sha256 hex of the whole secret
            rpm          INTEGER,
            tpm          INTEGER,
            models       TEXT,                       -- comma-separated; NULL: every model
            expires_at   {real},
            created_at   {real} NOT NULL,
            last_used_at {real},
            revoked_at   {real}
        )""",
        # One active key per name, across every process sharing the store.
        "CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys(name) "
        "WHERE revoked_at IS NULL",
        """CREATE TABLE IF NOT EXISTS usage (
            ts                {real} NOT NULL,
            request_id        TEXT NOT NULL,
            key_name          TEXT,                  -- NULL when the server runs without --auth
            method            TEXT NOT NULL,
            path              TEXT NOT NULL,
            model             TEXT,
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            status            INTEGER NOT NULL,
            latency_ms        {real} NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS usage_key_ts ON usage(key_name, ts)",
    )),
    # `gemmakit usage` without --key sums every key since a time: an index on ts alone.
    Migration(2, "usage index on ts", (
        "CREATE INDEX IF NOT EXISTS usage_ts ON usage(ts)",
    )),
)

LATEST = MIGRATIONS[-1].version

CREATE_TABLE = (f"CREATE TABLE IF NOT EXISTS {TABLE} (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at {real} NOT NULL)")
