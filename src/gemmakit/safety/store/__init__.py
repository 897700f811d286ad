"""The state store: API keys and the usage ledger, behind one interface with one file per backend.

- `sqlite` (the embedded default): one file under the data directory (`GEMMAKIT_HOME`,
  `gemmakit.sqlite3`), or `sqlite:///PATH`. Several processes on one machine may share it (WAL
  mode, busy timeout).
- `postgresql://USER[:PASSWORD]@HOST[:PORT]/DB` (psycopg 3, the `postgres` extra): one database
  shared by every gateway replica, so a key created anywhere works everywhere and every replica's
  requests land in one ledger.

`--store URL` (setting `store`) picks the backend by the URL's scheme, through a lazy registry like
the engines' and the rate-limit stores'. Both backends apply the same versioned migrations
(`migrations.py`) when they open, recorded in a `gemmakit_migrations` table.
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from gemmakit.errors import ConfigError, ServiceUnavailableError

STORES: dict[str, str] = {
    "sqlite": "gemmakit.safety.store.sqlite:SqliteStore",
    "postgresql": "gemmakit.safety.store.postgresql:PostgresStore",
    "postgres": "gemmakit.safety.store.postgresql:PostgresStore",
}

UsageRow = tuple[float, str, str | None, str, str, str | None, int, int, int, float]
"""One ledger row: ts, request_id, key_name, method, path, model, prompt_tokens,
completion_tokens, status, latency_ms."""


class StoreUnavailableError(ServiceUnavailableError):
    """The store cannot be reached (a PostgreSQL server down or unreachable): a 503, never a 500."""

    code = "store_unavailable"
    detail = ""
    """The driver's reason (logs and the CLI; never sent to a client)."""


class StateStore(Protocol):
    """What the key store, the usage ledger and the CLI need from a backend. Rows are plain
    mappings with the column names of `migrations.py`; times are epoch seconds."""

    name: str
    """The store as logs and errors may show it (a URL without its password)."""
    remote: bool
    """Queries cross a network: the request path keeps them off the event loop."""

    # --- keys ----------------------------------------------------------------------------------
    def insert_key(self, row: Mapping[str, Any]) -> bool:
        """Insert a key row; False when an active key already has its name (one name, one active
        key, enforced by the database across every process sharing it)."""
        ...

    def active_key(self, name: str) -> dict[str, Any] | None: ...

    def key_by_id(self, key_id: str) -> dict[str, Any] | None: ...

    def list_keys(self, *, include_revoked: bool = False) -> list[dict[str, Any]]: ...

    def replace_secret(self, name: str, key_id: str, secret_hash: str) -> bool:
        """Give the active key `name` a new id and secret hash; False if there is none."""
        ...

    def revoke_key(self, name: str, at: float) -> dict[str, Any] | None:
        """Revoke the active key `name`; its row after, or None if there was none."""
        ...

    def touch_key(self, key_id: str, at: float) -> None: ...

    # --- the usage ledger ----------------------------------------------------------------------
    def insert_usage(self, rows: Sequence[UsageRow]) -> None:
        """Append ledger rows, all or none."""
        ...

    def usage_window(self, key_name: str | None, since: float) -> dict[str, int]:
        """requests, prompt_tokens, completion_tokens, errors of one key (None: no key) since."""
        ...

    def usage_summary(self, *, since: float | None = None, key_name: str | None = None
                      ) -> list[dict[str, Any]]:
        """Per key and model: requests, errors, tokens, mean latency, last request."""
        ...

    # --- administration ------------------------------------------------------------------------
    def schema_version(self) -> int:
        """The highest migration applied."""
        ...

    def migrate(self) -> list[int]:
        """Apply the migrations not yet applied (done on open; safe to repeat, and safe when
        several processes open the store at once); returns the versions it applied."""
        ...

    def close(self) -> None: ...


def scheme_of(url: str | None) -> str:
    if not url:
        return "sqlite"
    return url.split("://", 1)[0].lower() if "://" in url else url.lower()


def check_url(url: str | None) -> str | None:
    """A `store` setting as given, or ConfigError naming the schemes there are (imports nothing
    heavy: settings validation calls this)."""
    if url is None or url == "":
        return None
    scheme = scheme_of(url)
    if scheme not in STORES or (scheme == "sqlite" and url != "sqlite"
                                and not url.startswith("sqlite:///")):
        raise ConfigError(f"unknown store '{redact(url)}': use sqlite (the file in the data "
                          "directory, the default), sqlite:///PATH or "
                          "postgresql://USER@HOST:PORT/DB")
    return url


def redact(url: str) -> str:
    """The URL with its password replaced by `***` (what logs and errors show)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable store URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


def open_state_store(url: str | None, home: Path | str) -> StateStore:
    """The store `url` names (None or `sqlite`: the SQLite file under `home`), migrated to the
    latest schema."""
    check_url(url)
    target = STORES[scheme_of(url)]
    module, _, cls = target.partition(":")
    try:
        klass = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise ConfigError(f"the {scheme_of(url)} store needs an extra: pip install "
                          f"'gemmakit[postgres]' ({e})") from None
    store: StateStore = klass.from_url(url, Path(home))
    return store


def db_path(home: Path) -> Path:
    return Path(home) / "gemmakit.sqlite3"


def connect(home: Path) -> sqlite3.Connection:
    """A plain connection to the data directory's SQLite store (migrated first), rows as
    `sqlite3.Row`: for tools and tests that read the tables directly."""
    from gemmakit.safety.store.sqlite import SqliteStore

    store = SqliteStore(db_path(home))
    try:
        return store.open_connection()
    finally:
        store.close()


def epoch_from_iso(value: str) -> float:
    """An ISO date (`2027-01-31`) or date-time, UTC unless it names a zone, as the epoch seconds
    the store keeps. Raises ValueError for anything else."""
    dt = datetime.fromisoformat(value.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


__all__ = ["STORES", "StateStore", "StoreUnavailableError", "UsageRow", "check_url", "connect",
           "db_path", "epoch_from_iso", "open_state_store", "redact", "scheme_of"]
