"""The key store and the usage ledger on their own (SQLite under a temporary data directory)."""

from __future__ import annotations

import time

import pytest

from gemmakit.errors import InvalidRequestError
from gemmakit.safety.auth import AuthenticationError, KeyStore, parse_expiry, secret_from_headers
from gemmakit.safety.usage import UsageLedger, UsageRecord, parse_since, read_summary


@pytest.fixture
def store(tmp_path):
    s = KeyStore(tmp_path)
    yield s
    s.close()


def test_create_authenticate_rotate_revoke(store):
    key, secret = store.create("svc", rpm=5, tpm=100, models=["a", "b"])
    assert store.authenticate(secret).name == "svc"
    assert key.models == ("a", "b") and key.allows_model("a") and not key.allows_model("c")
    rotated, new = store.rotate("svc")
    assert new != secret and (rotated.rpm, rotated.tpm) == (5, 100)
    with pytest.raises(AuthenticationError):
        store.authenticate(secret)
    store.revoke("svc")
    with pytest.raises(AuthenticationError, match="revoked"):
        store.authenticate(new)
    assert store.list() == [] and [k.name for k in store.list(include_revoked=True)] == ["svc"]
    # the name is free again once revoked
    store.create("svc")


def test_names_and_limits_are_checked(store):
    store.create("dup")
    with pytest.raises(InvalidRequestError, match="exists"):
        store.create("dup")
    with pytest.raises(InvalidRequestError):
        store.create("")
    with pytest.raises(InvalidRequestError):
        store.create("x", rpm=0)
    with pytest.raises(InvalidRequestError):
        store.rotate("nobody")


def test_secrets_are_not_stored(store, tmp_path):
    _, secret = store.create("k")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes()


def test_expiry_parsing():
    assert parse_expiry("2030-01-01") == pytest.approx(1893456000.0)
    assert parse_expiry("2030-01-01T01:00:00+01:00") == pytest.approx(1893456000.0)
    with pytest.raises(InvalidRequestError):
        parse_expiry("next tuesday")


def test_secret_from_headers():
    assert secret_from_headers({b"authorization": b"Bearer abc"}) == "abc"
    assert secret_from_headers({b"authorization": b"bearer  abc "}) == "abc"
    assert secret_from_headers({b"x-api-key": b"xyz"}) == "xyz"
    assert secret_from_headers({b"authorization": b"Basic abc"}) is None
    assert secret_from_headers({}) is None


def test_ledger_records_and_sums(tmp_path):
    ledger = UsageLedger(tmp_path)
    now = time.time()
    for i, (key, status) in enumerate([("a", 200), ("a", 400), ("b", 200), (None, 200)]):
        ledger.record(UsageRecord(now - i, f"r{i}", key, "POST", "/v1/chat/completions", "m",
                                  10, 5, status, 12.0))
    ledger.record(UsageRecord(now - 7200, "old", "a", "POST", "/v1/completions", "m", 1, 1,
                              200, 1.0))
    ledger.flush()
    assert ledger.window("a", now - 3600) == {"requests": 2, "prompt_tokens": 20,
                                              "completion_tokens": 10, "errors": 1}
    assert ledger.window(None, now - 3600)["requests"] == 1
    rows = read_summary(tmp_path, key_name="a")
    assert rows[0]["requests"] == 3 and rows[0]["errors"] == 1
    assert sum(r["requests"] for r in read_summary(tmp_path, since=now - 3600)) == 4
    ledger.close()


def test_parse_since():
    now = 1_000_000.0
    assert parse_since("90m", now) == now - 5400
    assert parse_since("1h30m", now) == now - 5400
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("2030-01-01", now) == pytest.approx(1893456000.0)
    with pytest.raises(InvalidRequestError):
        parse_since("yesterday-ish", now)
