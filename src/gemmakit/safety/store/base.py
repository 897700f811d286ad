"""What both SQL backends share: the queries (written once, `?` placeholders, SQL that SQLite and
PostgreSQL read alike), one connection per thread, and the migration runner. A backend supplies
how to connect, how to take an exclusive transaction, and which driver errors mean what."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from gemmakit.errors import ConfigError
from gemmakit.safety.store import StoreUnavailableError, UsageRow
from gemmakit.safety.store.migrations import CREATE_TABLE, LATEST, MIGRATIONS, TABLE, TYPES

log = logging.getLogger("gemmakit.store")

_KEY_COLUMNS = ("id", "name", "secret_hash", "rpm", "tpm", "models", "expires_at", "created_at")
_USAGE_INSERT = ("INSERT INTO usage (ts, request_id, key_name, method, path, model, "
                 "prompt_tokens, completion_tokens, status, latency_ms) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# CASE rather than SUM(bool): PostgreSQL does not sum booleans. Sums of INTEGER are BIGINT there.
_ERRORS = "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)"


class SqlStore(ABC):
    """A `StateStore` over a DB-API connection per thread (each thread's connection is its own,
    so a transaction never interleaves with another thread's statements)."""

    dialect: ClassVar[str]
    remote: ClassVar[bool]
    placeholder: ClassVar[str] = "?"
    unique_violation: ClassVar[tuple[type[BaseException], ...]] = ()
    unavailable: ClassVar[tuple[type[BaseException], ...]] = ()
    """Driver errors that mean the database cannot be reached (raised as StoreUnavailableError)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        try:
            self.migrate()
        except StoreUnavailableError as e:  # at start: say which store, and why
            raise ConfigError(f"cannot open the store {name}: {e.detail}") from None

    # --- what a backend supplies ------------------------------------------------------------
    @abstractmethod
    def open_connection(self) -> Any:
        """A new connection in autocommit mode whose rows read as mappings."""

    @abstractmethod
    def _transaction(self, conn: Any, *, exclusive: bool = False
                     ) -> contextlib.AbstractContextManager[None]:
        """A transaction (batched writes); `exclusive`: one that also holds the store-wide
        migration lock, so processes opening the store at once migrate one after another."""

    def _broken(self, conn: Any) -> bool:
        return False

    # --- connections and statements ---------------------------------------------------------
    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._broken(conn):
            self._discard(conn)
            conn = None
        if conn is None:
            with self._errors():
                conn = self.open_connection()
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _discard(self, conn: Any) -> None:
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)
        with contextlib.suppress(Exception):
            conn.close()
        self._local.conn = None

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self.unavailable as e:
            conn = getattr(self._local, "conn", None)
            if conn is not None and self._broken(conn):
                self._discard(conn)
            log.warning("store %s unavailable: %s", self.name, e)
            err = StoreUnavailableError("The key and usage store is unavailable; retry shortly.")
            err.detail = str(e).strip()
            raise err from None

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        def fetch() -> list[dict[str, Any]]:
            return [dict(r) for r in self._conn().execute(self._sql(sql), args).fetchall()]

        with self._errors():
            try:
                return fetch()
            except self.unavailable:
                conn = getattr(self._local, "conn", None)
                if conn is None or not self._broken(conn):
                    raise
                # A connection the server ended (a restart, a failover): a read is safe to run
                # once more on a new one, so the request path does not see the reconnect.
                self._discard(conn)
                return fetch()

    def _one(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    def _run(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._errors():
            return int(self._conn().execute(self._sql(sql), args).rowcount)

    # --- keys ---------------------------------------------------------------------------------
    def insert_key(self, row: Mapping[str, Any]) -> bool:
        sql = (f"INSERT INTO api_keys ({', '.join(_KEY_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(_KEY_COLUMNS))})")
        try:
            self._run(sql, [row.get(c) for c in _KEY_COLUMNS])
        except self.unique_violation:
            return False
        return True

    def active_key(self, name: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM api_keys WHERE name = ? AND revoked_at IS NULL", (name,))

    def key_by_id(self, key_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM api_keys WHERE id = ?", (key_id,))

    def list_keys(self, *, include_revoked: bool = False) -> list[dict[str, Any]]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        return self._all(f"SELECT * FROM api_keys{where} ORDER BY created_at, name")

    def replace_secret(self, name: str, key_id: str, secret_hash: str) -> bool:
        return self._run("UPDATE api_keys SET id = ?, secret_hash = ?, last_used_at = NULL "
                         "WHERE name = ? AND revoked_at IS NULL",
                         (key_id, secret_hash, name)) > 0

    def revoke_key(self, name: str, at: float) -> dict[str, Any] | None:
        row = self.active_key(name)
        if row is None:
            return None
        if self._run("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                     (at, row["id"])) == 0:
            return None  # revoked (or rotated) by another process meanwhile
        return self.key_by_id(row["id"])

    def touch_key(self, key_id: str, at: float) -> None:
        self._run("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (at, key_id))

    # --- the usage ledger ---------------------------------------------------------------------
    def insert_usage(self, rows: Sequence[UsageRow]) -> None:
        if not rows:
            return
        conn = self._conn()
        with self._errors(), self._transaction(conn):
            conn.cursor().executemany(self._sql(_USAGE_INSERT), list(rows))

    def usage_window(self, key_name: str | None, since: float) -> dict[str, int]:
        who, args = _key_clause(key_name)
        row = self._one(
            "SELECT COUNT(*) AS requests, COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, "
            "COALESCE(SUM(completion_tokens), 0) AS completion_tokens, "
            f"COALESCE({_ERRORS}, 0) AS errors FROM usage WHERE {who} AND ts >= ?",
            (*args, since))
        assert row is not None
        return {k: int(v) for k, v in row.items()}

    def usage_summary(self, *, since: float | None = None, key_name: str | None = None
                      ) -> list[dict[str, Any]]:
        sql = (f"SELECT key_name, model, COUNT(*) AS requests, {_ERRORS} AS errors, "
               "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
               "AVG(latency_ms) AS mean_latency_ms, MAX(ts) AS last_ts FROM usage WHERE ts >= ?")
        args: list[Any] = [since or 0.0]
        if key_name is not None:
            sql += " AND key_name = ?"
            args.append(key_name)
        sql += " GROUP BY key_name, model ORDER BY key_name, model"
        return [{**r, "requests": int(r["requests"]), "errors": int(r["errors"]),
                 "prompt_tokens": int(r["prompt_tokens"]),
                 "completion_tokens": int(r["completion_tokens"]),
                 "mean_latency_ms": float(r["mean_latency_ms"]), "last_ts": float(r["last_ts"])}
                for r in self._all(sql, args)]

    # --- migrations ---------------------------------------------------------------------------
    def schema_version(self) -> int:
        row = self._one(f"SELECT MAX(version) AS v FROM {TABLE}")
        return int(row["v"]) if row is not None and row["v"] is not None else 0

    def migrate(self) -> list[int]:
        conn = self._conn()
        applied_now: list[int] = []
        with self._errors(), self._transaction(conn, exclusive=True):
            conn.execute(CREATE_TABLE.format(**TYPES[self.dialect]))
            done = {int(r["version"]) for r in conn.execute(f"SELECT version FROM {TABLE}")}
            if done and max(done) > LATEST:
                raise ConfigError(f"the store {self.name} has schema version {max(done)}, newer "
                                  f"than this gemmakit knows ({LATEST}): upgrade gemmakit")
            for m in MIGRATIONS:
                if m.version in done:
                    continue
                for statement in m.sql(self.dialect):
                    conn.execute(statement)
                conn.execute(self._sql(f"INSERT INTO {TABLE} (version, name, applied_at) "
                                       "VALUES (?, ?, ?)"), (m.version, m.name, time.time()))
                applied_now.append(m.version)
        if applied_now:
            log.info("store %s: applied migrations %s", self.name, applied_now)
        return applied_now

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()


def _key_clause(key_name: str | None) -> tuple[str, tuple[Any, ...]]:
    # `key_name IS ?` is SQLite's; `= NULL` matches nothing anywhere: say NULL explicitly.
    return ("key_name IS NULL", ()) if key_name is None else ("key_name = ?", (key_name,))

