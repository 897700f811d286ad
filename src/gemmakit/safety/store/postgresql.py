"""The shared store: PostgreSQL through psycopg 3 (`pip install 'gemmakit[postgres]'`).

`--store postgresql://USER[:PASSWORD]@HOST[:PORT]/DB` (any libpq URL: `?sslmode=require`,
`?options=-csearch_path=gemmakit`, `host=/run/postgresql` sockets...). Every gateway replica
pointed at the same database sees the same keys the moment they change (a revoked key stops
working on every replica at its next request) and writes into one usage ledger.

Each thread keeps one autocommit connection; a connection that breaks is dropped and the next
query reconnects, and meanwhile callers get a 503 (`StoreUnavailableError`), never a 500.
Migrations run under a transaction-scoped advisory lock, so replicas starting together apply
each one exactly once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from gemmakit.errors import ConfigError
from gemmakit.safety.store import redact
from gemmakit.safety.store.base import SqlStore

# pg_advisory_xact_lock key for migrations: "gemmakit" read as a 63-bit integer.
_MIGRATION_LOCK = int.from_bytes(b"gemmakit", "big") & (2**63 - 1)


class PostgresStore(SqlStore):
    dialect: ClassVar[str] = "postgresql"
    remote: ClassVar[bool] = True
    placeholder: ClassVar[str] = "%s"
    unique_violation: ClassVar[tuple[type[BaseException], ...]] = (psycopg.errors.UniqueViolation,)
    unavailable: ClassVar[tuple[type[BaseException], ...]] = (psycopg.OperationalError,
                                                              psycopg.InterfaceError)

    def __init__(self, url: str) -> None:
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as e:
            raise ConfigError(f"invalid PostgreSQL URL '{redact(url)}': {e}") from None
        params.setdefault("connect_timeout", 5)
        params.setdefault("application_name", "gemmakit")
        self._conninfo = make_conninfo("", **params)
        super().__init__(redact(url))

    @classmethod
    def from_url(cls, url: str, home: Path) -> PostgresStore:
        return cls(url)

    def open_connection(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._conninfo, autocommit=True, row_factory=dict_row)

    def _broken(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)

    @contextlib.contextmanager
    def _transaction(self, conn: Any, *, exclusive: bool = False) -> Iterator[None]:
        with conn.transaction():
            if exclusive:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            yield
