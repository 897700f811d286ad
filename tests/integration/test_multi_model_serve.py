"""Several models in one real server: `gemmakit serve` with the bundled GGUF under two served
names (`--model NAME=MODEL`), the openai client on both, /v1/models listing both, keep_alive 0
unloading one and its next request loading it again, and `gemmakit ps` reading /api/ps."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import MODEL, Server, start_server, stop_server

SMALL = "small"


@pytest.fixture(scope="module")
def multi(gemmakit_home: Path, model_path: Path, tmp_path_factory) -> Iterator[Server]:
    s = start_server(gemmakit_home, tmp_path_factory.mktemp("multi"), "--model", MODEL,
                     "--model", f"{SMALL}={MODEL}", "--context-length", "1024",
                     "--parallel", "2", "--max-loaded-models", "2")
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def client(multi: Server):
    from openai import OpenAI

    return OpenAI(base_url=f"{multi.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def ps(multi: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gemmakit", "ps", "--url", multi.base_url,
                           *args], capture_output=True, text=True, timeout=60)


def test_models_lists_both_and_each_answers_under_its_name(client, multi):
    assert [m.id for m in client.models.list().data] == [MODEL, SMALL]
    answers = {}
    for name in (MODEL, SMALL):
        r = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8,
            temperature=0)
        assert r.model == name
        assert r.usage is not None and r.usage.completion_tokens > 0
        answers[name] = r.choices[0].message.content
    # The same weights, greedy: the same answer from both engines.
    assert answers[MODEL] == answers[SMALL] and answers[MODEL]
    card = httpx.get(f"{multi.base_url}/v1/models/{SMALL}").json()
    assert card["context_length"] == 1024 and card["engine"] == "llamacpp"
    assert card["status"]["state"] == "loaded" and card["status"]["slots"] == 2
    err = httpx.post(f"{multi.base_url}/v1/chat/completions", json={
        "model": "gemma-3-8b", "messages": [{"role": "user", "content": "hi"}]})
    assert err.status_code == 404 and err.json()["error"]["param"] == "model"


def test_gemmakit_ps_shows_both_models(client, multi):
    r = ps(multi, "--json")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {MODEL, SMALL}
    for m in models.values():
        assert m["context_length"] == 1024 and m["slots"] == 2 and m["state"] == "loaded"
        # the catalog's estimate of the 270M at 1024 tokens x 2 sequences: a few hundred MB
        assert 100e6 < m["size"] < 1e9 and m["size"] == m["memory_estimate_bytes"]
        assert m["measured_rss_delta_bytes"] > 0
        assert m["expires_at"] is None  # the default keep-alive: for ever
    assert body["limits"]["max_loaded_models"] == 2
    table = ps(multi)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "SIZE", "CONTEXT", "SLOTS"]
    assert {line.split()[0] for line in lines[1:]} == {MODEL, SMALL}
    assert all("Forever" in line for line in lines[1:])


def test_keep_alive_zero_unloads_and_the_next_request_loads_again(client, multi):
    r = client.completions.create(model=SMALL, prompt="One, two,", max_tokens=4, temperature=0,
                                  extra_body={"keep_alive": 0})
    assert r.model == SMALL and r.choices[0].text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        names = [m["name"] for m in json.loads(ps(multi, "--json").stdout)["models"]]
        if names == [MODEL]:
            break
        time.sleep(0.1)
    assert names == [MODEL]
    assert httpx.get(f"{multi.base_url}/v1/models/{SMALL}").json()["status"]["state"] \
        == "unloaded"
    # a bad keep_alive is the client's error, before anything loads
    bad = httpx.post(f"{multi.base_url}/v1/completions",
                     json={"model": SMALL, "prompt": "x", "keep_alive": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"
    r2 = client.completions.create(model=SMALL, prompt="One, two,", max_tokens=4, temperature=0,
                                   extra_body={"keep_alive": "5m"})
    assert r2.choices[0].text == r.choices[0].text  # loaded again, the same greedy answer
    card = httpx.get(f"{multi.base_url}/v1/models/{SMALL}").json()["status"]
    assert card["state"] == "loaded" and card["keep_alive_seconds"] == 300
    assert card["expires_at"] is not None
    metrics = httpx.get(f"{multi.base_url}/metrics").text
    assert "gemmakit_models_loaded 2.0" in metrics
    assert f'gemmakit_requests_total{{model="{SMALL}",status="200"}}' in metrics
