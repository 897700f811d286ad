"""`gemmakit pull` / `gemmakit rm` against a loopback hub (tests/hub_server.py): the real
huggingface_hub client lists the repository, resolves each file (302 to a second origin for LFS
files) and downloads it with ranged GETs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub_server import HubServer, Repo, sha256

from .conftest import free_port, start_server, stop_server

pytestmark = pytest.mark.integration

TINY = b"GGUF" + bytes(range(256)) * 4096  # ~1 MB; pull checks the magic, never loads it


def gk(home: Path, *args: str, endpoint: str, env: dict[str, str] | None = None,
       timeout: float = 180) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT")}
    return subprocess.run([sys.executable, "-m", "gemmakit", *args], capture_output=True,
                          text=True, timeout=timeout,
                          env={**base, "GEMMAKIT_HOME": str(home), "HF_ENDPOINT": endpoint,
                               "HF_HOME": str(home / "hf"), **(env or {})})


@pytest.fixture
def home(tmp_path: Path, model_path: Path) -> Path:
    """A data directory of its own, with the bundled model hard-linked in (and its verified
    stamp), so listing models does not assemble 250 MB again."""
    h = tmp_path / "home"
    (h / "models").mkdir(parents=True)
    for f in (model_path, model_path.with_name(model_path.name + ".verified")):
        try:
            os.link(f, h / "models" / f.name)
        except OSError:
            shutil.copy2(f, h / "models" / f.name)
    return h


@pytest.fixture
def hub() -> Iterator[HubServer]:
    s = HubServer()
    yield s
    s.close()


def test_pull_checks_the_hash_serves_by_name_and_rm_removes(hub, home, model_path, tmp_path):
    data = model_path.read_bytes()
    hub.repos["test-org/gemma-3-270m-GGUF"] = Repo(
        {"gemma-3-270m-Q4_K_M.gguf": data, "README.md": b"# a card\n"},
        lfs={"gemma-3-270m-Q4_K_M.gguf"})
    r = gk(home, "pull", "test-org/gemma-3-270m-GGUF", "--json", endpoint=hub.endpoint)
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["name"] == "gemma-3-270m-q4_k_m"  # no catalog checkpoint: the file's name
    assert p["format"] == "gguf" and p["quantization"] == "Q4_K_M"
    assert p["files"] == [{"path": "gemma-3-270m-Q4_K_M.gguf", "size": len(data),
                           "sha256": sha256(data)}]
    stored = Path(p["path"])
    assert stored.is_relative_to(home / "models" / "pulled")
    assert stored.stat().st_size == len(data)
    assert not list(stored.parent.glob("*.part*"))
    # The real client went through the hub's layout: listing, HEAD on resolve, GET on the CDN.
    kinds = {(m, path.split(":")[0]) for m, path, _ in hub.requests}
    assert {("GET", "hub"), ("HEAD", "hub"), ("GET", "cdn")} <= kinds

    again = gk(home, "pull", "test-org/gemma-3-270m-GGUF", endpoint=hub.endpoint)
    assert again.returncode == 0 and "up to date" in again.stderr

    rows = json.loads(gk(home, "models", "--json", endpoint=hub.endpoint).stdout)
    assert {"gemma-3-270m", "gemma-3-270m-q4_k_m"} <= {x["name"] for x in rows}

    server = start_server(home, tmp_path, "--model", "gemma-3-270m-q4_k_m", "--parallel", "1",
                          "--context-length", "1024")
    try:
        from openai import OpenAI

        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["gemma-3-270m-q4_k_m"]
        out = client.completions.create(model="gemma-3-270m-q4_k_m", prompt="One, two,",
                                        max_tokens=4, temperature=0)
        assert out.usage.completion_tokens > 0
    finally:
        stop_server(server)

    bundled = gk(home, "rm", "gemma-3-270m", endpoint=hub.endpoint)
    assert bundled.returncode != 0 and "bundled model" in bundled.stderr
    assert "Traceback" not in bundled.stderr
    r = gk(home, "rm", "gemma-3-270m-q4_k_m", endpoint=hub.endpoint)
    assert r.returncode == 0, r.stderr
    assert not stored.parent.exists()
    gone = gk(home, "rm", "gemma-3-270m-q4_k_m", endpoint=hub.endpoint)
    assert gone.returncode != 0 and "no pulled model" in gone.stderr


def test_catalog_checkpoint_gets_the_catalog_name(hub, home):
    from gemmakit.catalog import resolve

    hub.repos["google/gemma-3-1b-it-qat-q4_0-gguf"] = Repo(
        {"gemma-3-1b-it-q4_0.gguf": TINY, "config.json": b"{}"}, lfs={"gemma-3-1b-it-q4_0.gguf"})
    r = gk(home, "pull", "google/gemma-3-1b-it-qat-q4_0-gguf", "--json", endpoint=hub.endpoint)
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["name"] == "gemma-3-1b-it-qat-q4_0"
    assert p["catalog_id"] == "gemma-3-1b"
    # --model takes the stored name, or the catalog id while one pulled model has it.
    for spec in ("gemma-3-1b-it-qat-q4_0", "gemma-3-1b"):
        ref = resolve(spec, home / "models")
        assert ref.name == "gemma-3-1b-it-qat-q4_0" and ref.path.read_bytes() == TINY


def test_a_corrupted_download_is_refused_and_not_stored(hub, home):
    hub.repos["test-org/tiny"] = Repo({"tiny.gguf": TINY}, lfs={"tiny.gguf"})
    hub.corrupt["tiny.gguf"] = TINY[:-1] + b"\x00"  # same size, other bytes
    r = gk(home, "pull", "test-org/tiny", endpoint=hub.endpoint)
    assert r.returncode != 0
    assert "failed its sha256 check" in r.stderr and sha256(TINY) in r.stderr
    assert "Traceback" not in r.stderr
    folder = home / "models" / "pulled" / "tiny"
    assert not (folder / "tiny.gguf").exists()
    assert not list(folder.glob("*.part*"))
    assert not (folder / "gemmakit-pull.json").exists()


def test_an_interrupted_pull_resumes_where_it_stopped(hub, home):
    # huggingface_hub writes in 10 MiB chunks: a cut after 15 MiB leaves one whole chunk.
    big = b"GGUF" + os.urandom(24 << 20)
    hub.repos["test-org/tiny"] = Repo({"tiny.gguf": big}, lfs={"tiny.gguf"})
    hub.cut_after = 15 << 20  # the connection drops there; the hub then answers 500
    r = gk(home, "pull", "test-org/tiny", endpoint=hub.endpoint)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "HTTP 500" in r.stderr
    part = home / "models" / "pulled" / "tiny" / "tiny.gguf.part"
    kept = part.stat().st_size
    assert 0 < kept <= 15 << 20
    assert part.read_bytes() == big[:kept]
    hub.heal()
    hub.requests.clear()
    r = gk(home, "pull", "test-org/tiny", endpoint=hub.endpoint)
    assert r.returncode == 0, r.stderr
    assert "resuming tiny.gguf" in r.stderr
    assert ("GET", "cdn:/blobs/" + sha256(big), f"bytes={kept}-") in hub.requests
    assert (home / "models" / "pulled" / "tiny" / "tiny.gguf").read_bytes() == big
    assert not part.exists()


def test_offline_says_the_hub_cannot_be_reached(home):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    r = gk(home, "pull", "google/gemma-3-1b-it-qat-q4_0-gguf", endpoint=closed, timeout=60)
    assert r.returncode == 2
    assert "cannot be reached" in r.stderr and closed in r.stderr
    assert "Traceback" not in r.stderr
    r = gk(home, "pull", "google/gemma-3-1b-it-qat-q4_0-gguf", endpoint=closed,
           env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "HF_HUB_OFFLINE" in r.stderr and "Traceback" not in r.stderr
    assert not (home / "models" / "pulled").exists() or not any(
        (home / "models" / "pulled").iterdir())


def test_unknown_repository_and_file_are_clear_errors(hub, home):
    hub.repos["test-org/two"] = Repo({"a.gguf": TINY, "b.gguf": TINY + b"x"},
                                     lfs={"a.gguf", "b.gguf"})
    r = gk(home, "pull", "test-org/nope", endpoint=hub.endpoint)
    assert r.returncode == 2 and "no model repository test-org/nope" in r.stderr
    r = gk(home, "pull", "test-org/two", endpoint=hub.endpoint)
    assert r.returncode == 2 and "several GGUF files" in r.stderr and "a.gguf" in r.stderr
    r = gk(home, "pull", "test-org/two:c.gguf", endpoint=hub.endpoint)
    assert r.returncode == 2 and "has no file 'c.gguf'" in r.stderr
    r = gk(home, "pull", "not-a-repo", endpoint=hub.endpoint)
    assert r.returncode == 2 and "REPO[:FILE]" in r.stderr
