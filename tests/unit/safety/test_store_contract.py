"""One contract for every state-store backend: SQLite (a file under a temporary data directory)
and PostgreSQL (a real server the session starts, a fresh database per test; see
tests/conftest.py). Keys, scopes, the ledger and its summaries, migrations, concurrent writers."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from gemmakit.errors import ConfigError, InvalidRequestError
from gemmakit.safety.auth import AuthenticationError, KeyStore
from gemmakit.safety.store import (
    StateStore,
    StoreUnavailableError,
    check_url,
    db_path,
    open_state_store,
    redact,
)
from gemmakit.safety.store.migrations import LATEST, MIGRATIONS, TABLE
from gemmakit.safety.usage import UsageLedger, UsageRecord, read_summary


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path) -> Callable[[], StateStore]:
    """opener() -> a new store instance on the same backing database (a second opener call is
    what a second process or replica would open)."""
    if request.param == "sqlite":
        url, home = None, tmp_path / "home"
    else:
        url, home = request.getfixturevalue("postgres_url"), tmp_path / "unused"
    return lambda: open_state_store(url, home)


@pytest.fixture
def store(opener) -> Iterator[StateStore]:
    s = opener()
    yield s
    s.close()


def rec(ts, rid, key="a", status=200, prompt=10, completion=5, model="m"):
    return UsageRecord(ts, rid, key, "POST", "/v1/chat/completions", model, prompt, completion,
                       status, 12.0)


# --- keys ---------------------------------------------------------------------------------------
def test_create_authenticate_rotate_revoke(store):
    keys = KeyStore(store)
    key, secret = keys.create("svc", rpm=5, tpm=100, models=["a", "b"])
    assert keys.authenticate(secret) == key and (key.rpm, key.tpm) == (5, 100)
    assert key.models == ("a", "b") and key.allows_model("a") and not key.allows_model("c")
    rotated, new = keys.rotate("svc")
    assert new != secret and (rotated.name, rotated.rpm, rotated.models) == ("svc", 5, ("a", "b"))
    with pytest.raises(AuthenticationError, match="Incorrect"):
        keys.authenticate(secret)
    assert keys.authenticate(new).id == rotated.id
    revoked = keys.revoke("svc")
    assert revoked.revoked_at is not None
    with pytest.raises(AuthenticationError, match="revoked"):
        keys.authenticate(new)
    with pytest.raises(InvalidRequestError, match="no active key"):
        keys.revoke("svc")
    assert keys.list() == [] and [k.name for k in keys.list(include_revoked=True)] == ["svc"]
    again, _ = keys.create("svc")  # the name is free once revoked
    assert again.models is None and again.allows_model("anything")
    assert [k.name for k in keys.list(include_revoked=True)] == ["svc", "svc"]


def test_names_limits_and_expiry(store):
    keys = KeyStore(store)
    keys.create("dup")
    with pytest.raises(InvalidRequestError, match="exists") as e:
        keys.create("dup")
    assert e.value.param == "name"
    for bad in ({"name": ""}, {"name": "x", "rpm": 0}, {"name": "x", "tpm": -1}):
        with pytest.raises(InvalidRequestError):
            keys.create(**bad)
    with pytest.raises(InvalidRequestError):
        keys.rotate("nobody")
    _, old = keys.create("old", expires_at=time.time() - 1)
    with pytest.raises(AuthenticationError, match="expired"):
        keys.authenticate(old)
    for junk in (None, "", "gk-", "gk-000000000000-x", "sk-whatever"):
        with pytest.raises(AuthenticationError):
            keys.authenticate(junk)


def test_a_key_made_by_one_instance_works_in_another_at_once(opener):
    a, b = opener(), opener()
    try:
        _, secret = KeyStore(a).create("shared", rpm=7)
        assert KeyStore(b).authenticate(secret).rpm == 7
        KeyStore(a).revoke("shared")
        with pytest.raises(AuthenticationError, match="revoked"):  # no cache to go stale
            KeyStore(b).authenticate(secret)
    finally:
        a.close()
        b.close()


def test_touch_and_admit(store):
    import asyncio

    keys = KeyStore(store)
    _, secret = keys.create("t")
    assert keys.get("t").last_used_at is None
    key = asyncio.run(keys.admit(secret))
    assert key.name == "t" and keys.get("t").last_used_at == pytest.approx(time.time(), abs=5)


def test_secrets_are_not_stored(store, tmp_path):
    keys = KeyStore(store)
    _, secret = keys.create("k")
    rows = json.dumps([dict(r) for r in store.list_keys(include_revoked=True)])
    assert secret not in rows and secret.split("-")[-1] not in rows
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes()


def test_concurrent_creates_of_one_name_have_one_winner(opener):
    stores = [opener() for _ in range(6)]  # six "processes", each its own connection
    barrier = threading.Barrier(len(stores))

    def attempt(s):
        barrier.wait()
        try:
            return KeyStore(s).create("race")[1]
        except InvalidRequestError:
            return None

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            results = list(pool.map(attempt, stores))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert KeyStore(stores[0]).authenticate(winners[0]).name == "race"
        assert len(stores[0].list_keys()) == 1
    finally:
        for s in stores:
            s.close()


# --- the usage ledger ---------------------------------------------------------------------------
def test_ledger_rows_window_and_summary(store):
    ledger = UsageLedger(store)
    now = time.time()
    for i, (key, status) in enumerate([("a", 200), ("a", 400), ("b", 200), (None, 200)]):
        ledger.record(rec(now - i, f"r{i}", key, status))
    ledger.record(rec(now - 7200, "old", "a", prompt=1, completion=1, model="m2"))
    ledger.flush()
    assert ledger.window("a", now - 3600) == {"requests": 2, "prompt_tokens": 20,
                                              "completion_tokens": 10, "errors": 1}
    assert ledger.window(None, now - 3600) == {"requests": 1, "prompt_tokens": 10,
                                               "completion_tokens": 5, "errors": 0}
    assert ledger.window("nobody", now - 3600)["requests"] == 0
    everything = read_summary(store, key_name="a")
    assert [(r["model"], r["requests"], r["errors"], r["prompt_tokens"]) for r in everything] \
        == [("m", 2, 1, 20), ("m2", 1, 0, 1)]
    recent = ledger.summary(since=now - 3600)
    assert sum(r["requests"] for r in recent) == 4
    assert {r["key_name"] for r in recent} == {"a", "b", None}
    row = next(r for r in recent if r["key_name"] == "b")
    assert row["mean_latency_ms"] == pytest.approx(12.0) and row["last_ts"] == pytest.approx(
        now - 2)
    json.dumps(recent)  # plain ints and floats on every backend (no Decimal)
    ledger.close()
    assert store.usage_window("a", 0)["requests"] == 3  # a ledger leaves a shared store open


def test_concurrent_ledgers_lose_no_row(opener):
    stores = [opener() for _ in range(4)]
    ledgers = [UsageLedger(s) for s in stores]
    now = time.time()

    def write(i):
        for j in range(50):
            ledgers[i].record(rec(now, f"{i}-{j}", key=f"k{i % 2}", status=200 + 229 * (j % 5 == 0)))

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(write, range(4)))
        for ledger in ledgers:
            ledger.flush()
        rows = stores[0].usage_summary(since=now - 1)
        assert sum(r["requests"] for r in rows) == 200
        assert sum(r["errors"] for r in rows) == 40
        assert {r["key_name"]: r["requests"] for r in rows} == {"k0": 100, "k1": 100}
    finally:
        for ledger in ledgers:
            ledger.close()
        for s in stores:
            s.close()


# --- migrations ---------------------------------------------------------------------------------
def test_migrations_applied_once_and_idempotent(opener, store):
    assert store.schema_version() == LATEST
    assert store.migrate() == []
    with ThreadPoolExecutor(4) as pool:  # several processes opening at once
        others = list(pool.map(lambda _: opener(), range(4)))
    for s in others:
        assert s.migrate() == [] and s.schema_version() == LATEST
        s.close()
    rows = store._all(f"SELECT version, name FROM {TABLE} ORDER BY version")  # type: ignore[attr-defined]
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in MIGRATIONS]


def test_concurrent_first_opens_migrate_once(opener):
    with ThreadPoolExecutor(4) as pool:  # an empty database, four replicas starting together
        stores = list(pool.map(lambda _: opener(), range(4)))
    try:
        rows = stores[0]._all(f"SELECT version FROM {TABLE}")  # type: ignore[attr-defined]
        assert sorted(r["version"] for r in rows) == [m.version for m in MIGRATIONS]
    finally:
        for s in stores:
            s.close()


def test_a_newer_schema_is_refused(opener, store):
    store._run(f"INSERT INTO {TABLE} (version, name, applied_at) VALUES (?, ?, ?)",  # type: ignore[attr-defined]
               (LATEST + 1, "from the future", time.time()))
    with pytest.raises(ConfigError, match="newer than this gemmakit"):
        opener()


def test_a_sqlite_file_from_before_migrations_is_adopted(tmp_path):
    """The file gemmakit wrote before versioned migrations: same tables, no migrations table."""
    from gemmakit.safety.store.migrations import MIGRATIONS as ALL

    home = tmp_path / "home"
    home.mkdir()
    conn = sqlite3.connect(db_path(home))
    for statement in ALL[0].sql("sqlite"):
        conn.execute(statement)
    conn.execute("INSERT INTO api_keys (id, name, secret_hash, created_at) VALUES "
                 "('abc', 'legacy', 'x', 1.0)")
    conn.execute("INSERT INTO usage (ts, request_id, method, path, status, latency_ms) VALUES "
                 "(2.0, 'r', 'POST', '/v1/completions', 200, 1.0)")
    conn.commit()
    conn.close()
    store = open_state_store(None, home)
    try:
        assert store.schema_version() == LATEST
        assert [k["name"] for k in store.list_keys()] == ["legacy"]
        assert store.usage_summary()[0]["requests"] == 1
        indexes = {r["name"] for r in store._all(  # type: ignore[attr-defined]
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "usage_ts" in indexes  # migration 2 ran on the old file
    finally:
        store.close()


# --- URLs and failures --------------------------------------------------------------------------
def test_store_urls_are_checked():
    assert check_url(None) is None and check_url("sqlite") == "sqlite"
    assert check_url("postgresql://u@h/db") == "postgresql://u@h/db"
    for bad in ("mysql://u@h/db", "sqlite://relative", "redis://h"):
        with pytest.raises(ConfigError, match="unknown store"):
            check_url(bad)
    assert redact("postgresql://u:hunter2@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"

    from gemmakit.settings import Settings

    with pytest.raises(ConfigError, match="store"):
        Settings.load(store="mysql://root:pw@h/db")
    assert Settings.load(store="postgresql://u@h/db").store == "postgresql://u@h/db"


def test_sqlite_url_names_a_file(tmp_path):
    path = tmp_path / "elsewhere" / "state.sqlite3"
    store = open_state_store(f"sqlite:///{path}", tmp_path / "home")
    try:
        KeyStore(store).create("k")
    finally:
        store.close()
    assert path.is_file() and not (tmp_path / "home").exists()
    assert path.stat().st_mode & 0o777 == 0o600


def test_unreachable_postgres_at_open_names_the_store_not_its_password():
    import socket

    pytest.importorskip("psycopg")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError) as e:
        open_state_store(f"postgresql://u:hunter2@127.0.0.1:{port}/db?connect_timeout=2", ".")
    assert f"127.0.0.1:{port}" in e.value.message and "hunter2" not in e.value.message


def test_a_dropped_postgres_connection_is_reopened_and_a_refused_one_is_a_503(postgres_url):
    import psycopg

    store = open_state_store(postgres_url, ".")
    base, db = postgres_url.rsplit("/", 1)
    try:
        keys = KeyStore(store)
        _, secret = keys.create("k")
        with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
            end = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
            admin.execute(end, (db,))
            assert keys.authenticate(secret).name == "k"  # a read reconnects once, unseen
            admin.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
            admin.execute(end, (db,))
            try:
                with pytest.raises(StoreUnavailableError) as e:
                    keys.authenticate(secret)
                assert e.value.status == 503 and e.value.code == "store_unavailable"
                assert "127.0.0.1" not in e.value.message and "not currently accepting" in \
                    e.value.detail
            finally:
                admin.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
        assert keys.authenticate(secret).name == "k"  # and the next call after works
    finally:
        store.close()
