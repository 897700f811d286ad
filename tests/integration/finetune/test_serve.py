"""Adapters served by name on the real server (llama.cpp and transformers engines), through the
openai client: /v1/models lists them with their parent, "model": NAME answers in the trained
format while the base's answers stay what a server without adapters gives, base and adapter
requests run concurrently with the same answers as alone, the admin endpoints load and unload,
and an adapter trained on another base is a 400."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import MODEL, start_server, stop_server

QUESTION = [{"role": "system", "content": "Answer in the form ANSWER: <word>."},
            {"role": "user", "content": "What is the capital of Portugal?"}]


def _ask(base_url: str, model: str) -> str:
    from openai import OpenAI

    c = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    r = c.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=8)
    return r.choices[0].message.content or ""


@pytest.fixture(scope="module")
def other_base(trained: dict[str, Any], gemmakit_home: Path) -> str:
    """A stored adapter whose manifest names another base (its sha256 differs)."""
    name = trained["name"] + "-elsewhere"
    dst = gemmakit_home / "adapters" / name
    shutil.copytree(trained["adapter_dir"], dst)
    m = json.loads((dst / "gemmakit-adapter.json").read_text())
    m["name"], m["base"]["sha256"], m["base"]["model"] = name, "0" * 64, "gemma-3-1b"
    (dst / "gemmakit-adapter.json").write_text(json.dumps(m))
    yield name
    shutil.rmtree(dst, ignore_errors=True)


def test_llamacpp_serves_the_adapter_by_name(trained, other_base, client, gemmakit_home,
                                             tmp_path_factory) -> None:
    name = trained["name"]
    base_alone = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                                max_tokens=8).choices[0].message.content
    s = start_server(gemmakit_home, tmp_path_factory.mktemp("lora"), "--adapters", name,
                     "--parallel", "2")
    try:
        models = httpx.get(f"{s.base_url}/v1/models", timeout=30).json()["data"]
        card = next(m for m in models if m["id"] == name)
        assert card["parent"] == MODEL and card["engine"] == "llamacpp"
        assert httpx.get(f"{s.base_url}/v1/models/{name}", timeout=30).json()["parent"] == MODEL
        tuned = _ask(s.base_url, name)
        assert tuned.startswith("ANSWER:"), tuned
        assert not (base_alone or "").startswith("ANSWER:")
        assert _ask(s.base_url, MODEL) == base_alone  # the base is unchanged beside it
        with ThreadPoolExecutor(4) as pool:  # mixed in the same steps: same answers as alone
            got = list(pool.map(lambda m: _ask(s.base_url, m), [name, MODEL, name, MODEL]))
        assert got == [tuned, base_alone, tuned, base_alone]
        with httpx.Client(base_url=s.base_url, timeout=120) as http:
            r = http.post("/v1/chat/completions", json={"model": other_base,
                                                        "messages": QUESTION})
            assert r.status_code == 400 and r.json()["error"]["param"] == "model"
            assert "gemma-3-1b" in r.json()["error"]["message"]
            r = http.post("/v1/adapters/load", json={"lora_name": other_base})
            assert r.status_code == 400 and r.json()["error"]["code"] == "adapter_base_mismatch"
            r = http.post("/v1/adapters/load", json={"lora_name": "no-such"})
            assert r.status_code == 404 and r.json()["error"]["param"] == "lora_name"
            r = http.post("/v1/adapters/unload", json={"lora_name": name})
            assert r.status_code == 200, r.text
            r = http.post("/v1/chat/completions", json={"model": name, "messages": QUESTION})
            assert r.status_code == 404 and "not loaded" in r.json()["error"]["message"]
            assert name not in [m["id"] for m in http.get("/v1/models").json()["data"]]
            r = http.post("/v1/adapters/load", json={"lora_name": name})
            assert r.status_code == 200 and r.json()["parent"] == MODEL
        assert _ask(s.base_url, name) == tuned
        assert (Path(trained["adapter_dir"]) / "adapter.gguf").is_file()
    finally:
        stop_server(s)


def test_transformers_loads_the_adapter_at_run_time(trained, gemmakit_home, dense_270m,
                                                    tmp_path_factory) -> None:
    name = trained["name"]
    s = start_server(gemmakit_home, tmp_path_factory.mktemp("lora-hf"), "--engine",
                     "transformers", "--threads", "2")
    try:
        before = _ask(s.base_url, MODEL)
        r = httpx.post(f"{s.base_url}/v1/adapters/load", json={"lora_name": name}, timeout=300)
        assert r.status_code == 200, r.text
        tuned = _ask(s.base_url, name)
        assert tuned.startswith("ANSWER:") and not before.startswith("ANSWER:")
        assert _ask(s.base_url, MODEL) == before
        card = next(m for m in httpx.get(f"{s.base_url}/v1/models").json()["data"]
                    if m["id"] == name)
        assert card["parent"] == MODEL and card["engine"] == "transformers"
    finally:
        stop_server(s)
