"""Two gateway replicas sharing one PostgreSQL (`--store`: keys and the usage ledger) and one Redis
(`--ratelimit-store`: per-key limits), both real servers the tests start (tests/conftest.py).

Each replica is the real app (its own settings, safety layer, store connections, ledger writer
and Redis client) on uvicorn over loopback, around the fake engine: the shared state is what is
under test, and the machine is too small for two model servers per case. Keys are made and the
ledger is read through the real `gemmakit keys` / `gemmakit usage` CLI in subprocesses.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import FakeEngine, uvicorn_thread

MODEL = "gemma-test"
CHAT = "/v1/chat/completions"


def gemmakit(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "gemmakit", *args], capture_output=True, text=True,
                       timeout=120, env={**os.environ})
    assert r.returncode == 0, r.stderr
    return r.stdout


def create_key(store: str, name: str, *flags: str) -> str:
    return json.loads(gemmakit("keys", "create", name, "--store", store, "--json", *flags))[
        "secret"]


@contextlib.contextmanager
def replicas(tmp_path: Any, store: str, redis: str, n: int = 2) -> Iterator[list[tuple[str, Any]]]:
    """n replicas, each with its own data directory: [(base URL, app)]."""
    from gemmakit.server.app import create_app

    apps = []
    for i in range(n):
        engine = FakeEngine()
        apps.append(create_app(MODEL, lambda e=engine: e, home=tmp_path / f"replica{i}",
                               auth=True, store=store, ratelimit_store=redis))
    with contextlib.ExitStack() as stack:
        yield [(stack.enter_context(uvicorn_thread(app)), app) for app in apps]


def chat(base_url: str, secret: str, **kw: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
            **kw}
    return httpx.post(base_url + CHAT, json=body, headers={"Authorization": f"Bearer {secret}"},
                      timeout=30)


def alternate(urls: list[str], secret: str, n: int, workers: int = 6) -> list[httpx.Response]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda i: chat(urls[i % len(urls)], secret), range(n)))


def flush(apps: list[Any]) -> None:
    for app in apps:
        app.state.safety.ledger.flush()


def test_a_key_made_through_the_cli_works_on_every_replica(tmp_path, postgres_url, redis_url):
    import openai

    secret = create_key(postgres_url, "everywhere", "--models", MODEL)
    with replicas(tmp_path, postgres_url, redis_url) as reps:
        for url, _ in reps:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0)
            out = client.chat.completions.create(model=MODEL, max_tokens=1,
                                                 messages=[{"role": "user", "content": "hi"}])
            assert out.choices[0].message.content == "ok"
        # a key one replica's store creates is known to the other at once
        _, other = reps[0][1].state.safety.keys.create("made-on-0")
        assert chat(reps[1][0], other).status_code == 200
        listed = json.loads(gemmakit("keys", "list", "--store", postgres_url, "--json"))
        assert {k["name"] for k in listed} == {"everywhere", "made-on-0"}
        # revoked through the CLI: refused by both replicas on their next request
        gemmakit("keys", "revoke", "everywhere", "--store", postgres_url)
        for url, _ in reps:
            r = chat(url, secret)
            assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_requests_per_minute_enforced_across_two_replicas(tmp_path, postgres_url, redis_url,
                                                         capsys):
    """Limit 40 RPM, 60 requests alternating between the replicas: 40 (±5 %) admitted, one
    ledger with all 60."""
    limit, sent = 40, 60
    name = f"rpm-{secrets.token_hex(3)}"  # the Redis server outlives this test
    secret = create_key(postgres_url, name, "--rpm", str(limit))
    with replicas(tmp_path, postgres_url, redis_url) as reps:
        urls = [u for u, _ in reps]
        responses = alternate(urls, secret, sent)
        flush([app for _, app in reps])
    codes = [r.status_code for r in responses]
    admitted = codes.count(200)
    with capsys.disabled():
        print(f"\nreplicas: {admitted} of {sent} admitted at {limit} RPM")
    assert limit * 0.95 <= admitted <= limit * 1.05, codes
    assert set(codes) == {200, 429}
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    # both replicas admitted some: the limit is one shared window, not one per replica
    per_replica = [sum(1 for i, c in enumerate(codes) if c == 200 and i % 2 == k)
                   for k in range(2)]
    assert all(n > 0 for n in per_replica), per_replica

    rows = json.loads(gemmakit("usage", "--store", postgres_url, "--key", name, "--json"))
    assert sum(r["requests"] for r in rows) == sent
    assert sum(r["errors"] for r in rows) == sent - admitted
    assert sum(r["prompt_tokens"] for r in rows) == sum(
        r.json()["usage"]["prompt_tokens"] for r in responses if r.status_code == 200)


def test_tokens_per_minute_enforced_across_two_replicas(tmp_path, postgres_url, redis_url,
                                                        capsys):
    """A TPM limit worth 40 requests, 60 sent alternating: 40 (±5 %) admitted, and the ledger's
    token sums are the admitted responses' usage."""
    with replicas(tmp_path, postgres_url, redis_url) as reps:
        urls = [u for u, _ in reps]
        probe = chat(urls[0], create_key(postgres_url, "probe"))
        assert probe.status_code == 200, probe.text
        per_request = probe.json()["usage"]["total_tokens"]  # max_tokens 1: reserved == used
        name = f"tpm-{secrets.token_hex(3)}"
        secret = create_key(postgres_url, name, "--tpm", str(40 * per_request))
        responses = alternate(urls, secret, 60)
        flush([app for _, app in reps])
    codes = [r.status_code for r in responses]
    admitted = codes.count(200)
    with capsys.disabled():
        print(f"\nreplicas: {admitted} of 60 admitted at {40 * per_request} TPM "
              f"({per_request} tokens a request)")
    assert 38 <= admitted <= 42, codes
    assert {r.json()["error"]["type"] for r in responses if r.status_code == 429} == {"tokens"}
    rows = json.loads(gemmakit("usage", "--store", postgres_url, "--json"))
    by_key = {r["key_name"]: r for r in rows}
    assert by_key["probe"]["requests"] == 1
    assert by_key[name]["requests"] == 60 and by_key[name]["errors"] == 60 - admitted
    used = sum(r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200)
    assert by_key[name]["prompt_tokens"] + by_key[name]["completion_tokens"] == used
    assert used <= 40 * per_request


def test_v1_usage_on_either_replica_reads_the_one_ledger(tmp_path, postgres_url, redis_url):
    secret = create_key(postgres_url, "reader")
    with replicas(tmp_path, postgres_url, redis_url) as reps:
        for url, _ in reps:
            for _ in range(3):
                assert chat(url, secret).status_code == 200
        flush([app for _, app in reps])
        seen = [httpx.get(f"{url}/v1/usage", headers={"Authorization": f"Bearer {secret}"},
                          timeout=30).json()["last_hour"]["requests"] for url, _ in reps]
    assert seen[0] >= 6 and seen[1] >= 6  # each sees the other's requests (and the usage calls)


@pytest.mark.parametrize("what", ["keys", "usage"])
def test_cli_against_an_unreachable_store_is_one_clear_line(what):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://u:hunter2@127.0.0.1:{port}/db?connect_timeout=2"
    args = ["keys", "list"] if what == "keys" else ["usage"]
    r = subprocess.run([sys.executable, "-m", "gemmakit", *args, "--store", url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "cannot open the store" in r.stderr and "hunter2" not in r.stderr
    assert "Traceback" not in r.stderr


def test_postgres_outage_is_a_503_and_the_ledger_catches_up(tmp_path, postgres_url, redis_url,
                                                           wait_until):
    """The database refuses connections (ALLOW_CONNECTIONS false, every session ended): requests
    that need a key get 503 store_unavailable, never a 500 or an unchecked pass; once it is back,
    keys work again and the ledger writes the rows it held, the 503s included."""
    import psycopg

    secret = create_key(postgres_url, "outage")
    base, db = postgres_url.rsplit("/", 1)
    with replicas(tmp_path, postgres_url, redis_url, n=1) as reps:
        (url, app), = reps
        assert chat(url, secret).status_code == 200
        with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (db,))
            try:
                down = [chat(url, secret) for _ in range(3)]
            finally:
                admin.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
        for r in down:
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "store_unavailable"
            assert r.headers["retry-after"] == "1" and "127.0.0.1" not in r.text
        assert chat(url, secret).status_code == 200

        def booked() -> bool:
            rows = app.state.safety.state.usage_summary(key_name=None)
            return sum(r["requests"] for r in rows) == 5
        wait_until(booked, timeout=30)  # the writer's back-off is at most 10 s
    with psycopg.connect(postgres_url) as conn:
        statuses = sorted(r[0] for r in conn.execute("SELECT status FROM usage").fetchall())
    assert statuses == [200, 200, 503, 503, 503]
