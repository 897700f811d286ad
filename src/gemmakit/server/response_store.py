"""Stored responses of the Responses API: one SQLite file under the data directory
(`$GEMMAKIT_HOME/responses.sqlite3`, beside the keys and usage ledger's `gemmakit.sqlite3`).

A separate file because it holds content (the conversation and the reply) where the ledger holds
none: it can be kept, moved or deleted on its own, and it is created mode 0600. Each row is one
response with the conversation before it (previous responses' items included, so a chain survives
the deletion of a response in its middle), scoped to the API key that created it: another key, or
a server without --auth, does not see it. Every access opens its own connection in a worker
thread, so the event loop never waits on the disk and nothing needs closing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemmakit.errors import GemmakitError

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id         TEXT PRIMARY KEY,
    key_id     TEXT,            -- the API key that created it; NULL when served without --auth
    created_at REAL NOT NULL,
    response   TEXT NOT NULL,   -- the Response object, JSON
    context    TEXT NOT NULL,   -- the input items before its output, JSON (previous ones first)
    n_prior    INTEGER NOT NULL DEFAULT 0  -- how many of them came from previous responses
);
"""


class ResponseNotFoundError(GemmakitError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


@dataclass(frozen=True)
class StoredResponse:
    id: str
    key_id: str | None
    response: dict[str, Any]
    context: list[dict[str, Any]]
    n_prior: int = 0
    """How many items of `context` came from previous responses (the rest are its input)."""

    def input_items(self) -> list[dict[str, Any]]:
        """The items of this response's own `input` (GET /v1/responses/{id}/input_items)."""
        return self.context[self.n_prior:]

    def conversation(self) -> list[dict[str, Any]]:
        """What a response continuing this one starts from: its input items, then its output."""
        return [*self.context, *self.response.get("output", [])]


class ResponseStore:
    def __init__(self, home: Path) -> None:
        self.path = Path(home) / "responses.sqlite3"

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch(mode=0o600)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(responses)")}
        if "n_prior" not in columns:  # a file written before input_items were listed
            conn.execute("ALTER TABLE responses ADD COLUMN n_prior INTEGER NOT NULL DEFAULT 0")
        return conn

    def _run(self, sql: str, args: tuple[Any, ...]) -> tuple[list[tuple[Any, ...]], int]:
        conn = self._connect()
        try:
            cur = conn.execute(sql, args)
            return cur.fetchall(), cur.rowcount
        finally:
            conn.close()

    async def put(self, rec: StoredResponse) -> None:
        await asyncio.to_thread(
            self._run, "INSERT OR REPLACE INTO responses (id, key_id, created_at, response, "
            "context, n_prior) VALUES (?, ?, ?, ?, ?, ?)",
            (rec.id, rec.key_id, time.time(), json.dumps(rec.response, ensure_ascii=False),
             json.dumps(rec.context, ensure_ascii=False), rec.n_prior))

    async def get(self, response_id: str, key_id: str | None) -> StoredResponse | None:
        rows, _ = await asyncio.to_thread(
            self._run, "SELECT response, context, n_prior FROM responses WHERE id = ? AND "
            "key_id IS ?", (response_id, key_id))
        if not rows:
            return None
        response, context, n_prior = rows[0]
        return StoredResponse(response_id, key_id, json.loads(response), json.loads(context),
                              n_prior)

    async def delete(self, response_id: str, key_id: str | None) -> bool:
        _, n = await asyncio.to_thread(
            self._run, "DELETE FROM responses WHERE id = ? AND key_id IS ?", (response_id, key_id))
        return n > 0
