"""The embedded store: one SQLite file (mode 0600: it holds key hashes), by default
`gemmakit.sqlite3` under the data directory. Several processes on one machine may share it: WAL
mode lets readers run beside the one writer, and a 30 s busy timeout queues writers."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from gemmakit.safety.store import db_path
from gemmakit.safety.store.base import SqlStore


class SqliteStore(SqlStore):
    dialect: ClassVar[str] = "sqlite"
    remote: ClassVar[bool] = False
    unique_violation: ClassVar[tuple[type[BaseException], ...]] = (sqlite3.IntegrityError,)
    unavailable: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.touch(mode=0o600)
        super().__init__(f"sqlite:///{self.path}")

    @classmethod
    def from_url(cls, url: str | None, home: Path) -> SqliteStore:
        if url and url.startswith("sqlite:///"):
            return cls(Path(url[len("sqlite:///"):]).expanduser())
        return cls(db_path(home))

    def open_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False,
                               isolation_level=None)
        conn.row_factory = sqlite3.Row
        # Switching a new database to WAL can answer "database is locked" at once, without the
        # busy handler, while other processes open it at the same moment: retried.
        deadline = time.monotonic() + 30
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    conn.close()
                    raise
                time.sleep(0.02)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    @contextlib.contextmanager
    def _transaction(self, conn: Any, *, exclusive: bool = False) -> Iterator[None]:
        # IMMEDIATE takes the file's write lock at BEGIN (every write transaction is exclusive
        # here), so two processes migrating at once queue instead of one failing when it
        # upgrades a read lock.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
