"""Several models in one server (server/models_registry.py) through the real app on uvicorn over
loopback, each model a fake engine: routing by `model`, loading on demand (one shared load),
LRU eviction under --max-loaded-models and --max-memory, keep-alive expiry (server default and
per request), requests in flight never evicted (503 + Retry-After), /v1/models/{id}, /api/ps,
the metrics, key scopes, drain and shutdown."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from gemmakit.errors import ConfigError, GemmakitError
from gemmakit.safety.auth import KeyStore
from gemmakit.server.app import create_models_app
from gemmakit.server.models_registry import ModelRegistry, ModelSpec, parse_duration
from gemmakit.settings import Settings
from tests.conftest import FakeEngine, uvicorn_thread

CHAT = "/v1/chat/completions"


def chat(model: str, **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **kw}


class Models:
    """Fake models by name: each load makes a new FakeEngine replying with the model's name;
    every load and close is recorded in order."""

    def __init__(self, *names: str, memory: dict[str, int] | None = None,
                 load_delay: float = 0.0) -> None:
        self.names = names
        self.memory = memory or {}
        self.load_delay = load_delay
        self.events: list[str] = []
        self.engines: dict[str, list[FakeEngine]] = {n: [] for n in names}
        self.gate: dict[str, threading.Event] = {}

    def loader(self, name: str):
        def load() -> FakeEngine:
            if name in self.gate:
                assert self.gate[name].wait(10)
            time.sleep(self.load_delay)
            eng = Closing(self, name)
            eng.default_reply = eng.text_reply(f"from {name}")
            self.engines[name].append(eng)
            self.events.append(f"load {name}")
            return eng
        return load

    def specs(self, settings: Settings) -> list[ModelSpec]:
        return [ModelSpec(n, self.loader(n), settings, memory_bytes=self.memory.get(n))
                for n in self.names]

    def current(self, name: str) -> FakeEngine:
        return self.engines[name][-1]


class Closing(FakeEngine):
    def __init__(self, models: Models, name: str) -> None:
        super().__init__(context_length=512)
        self.models, self.model = models, name

    async def aclose(self) -> None:
        await super().aclose()
        self.models.events.append(f"close {self.model}")


def serve(models: Models, home, **settings: Any):
    s = Settings.load(home=home, **settings)
    return uvicorn_thread(create_models_app(models.specs(s), s))


def state(base: str, name: str) -> str:
    return httpx.get(f"{base}/v1/models/{name}").json()["status"]["state"]


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def error(r: httpx.Response, status: int, param: str | None = ...) -> dict[str, Any]:  # type: ignore[assignment]
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not ...:
        assert err["param"] == param
    return err


# --- routing ----------------------------------------------------------------------------------
def test_each_request_routes_by_model_and_models_lists_all(tmp_path):
    m = Models("alpha", "beta")
    with serve(m, tmp_path) as base:
        for name in ("alpha", "beta", "alpha"):
            r = httpx.post(f"{base}{CHAT}", json=chat(name), timeout=10)
            assert r.status_code == 200, r.text
            assert r.json()["model"] == name
            assert r.json()["choices"][0]["message"]["content"] == f"from {name}"
        assert len(m.current("alpha").requests) == 2 and len(m.current("beta").requests) == 1
        r = httpx.post(f"{base}/v1/completions", json={"model": "beta", "prompt": "x"})
        assert r.json()["choices"][0]["text"] == "from beta"
        data = httpx.get(f"{base}/v1/models").json()["data"]
        assert [d["id"] for d in data] == ["alpha", "beta"]
        assert all(d["status"]["state"] == "loaded" for d in data)
        err = error(httpx.post(f"{base}{CHAT}", json=chat("gamma")), 404, "model")
        assert "'alpha', 'beta'" in err["message"]
        error(httpx.get(f"{base}/v1/models/gamma"), 404, "model")
        health = httpx.get(f"{base}/health").json()
        assert health["status"] == "ok" and health["models"] == {"alpha": "loaded",
                                                                 "beta": "loaded"}


def test_tokenizer_routes_route_by_model_too(tmp_path):
    m = Models("alpha", "beta")
    with serve(m, tmp_path) as base:
        r = httpx.post(f"{base}/tokenize", json={"model": "beta", "prompt": "ab"})
        assert r.status_code == 200, r.text
        assert httpx.get(f"{base}/tokenizer_info", params={"model": "beta"}).json()["model"] \
            == "beta"


# --- loading on demand, eviction --------------------------------------------------------------
def test_lru_eviction_under_max_loaded_models(tmp_path):
    m = Models("a", "b", "c")
    with serve(m, tmp_path, max_loaded_models=2) as base:
        assert m.events == ["load a", "load b"]  # what fits loads at start, in order
        assert state(base, "c") == "unloaded"
        for name in ("b", "a"):  # a is now the most recently used, b the least
            assert httpx.post(f"{base}{CHAT}", json=chat(name)).status_code == 200
        r = httpx.post(f"{base}{CHAT}", json=chat("c"), timeout=10)
        assert r.status_code == 200 and r.json()["model"] == "c"
        assert m.events[2:] == ["close b", "load c"]
        assert m.engines["b"][0].closed
        assert httpx.post(f"{base}{CHAT}", json=chat("b")).status_code == 200
        assert m.events[4:] == ["close a", "load b"]  # a was used before c
        assert [p["name"] for p in httpx.get(f"{base}/api/ps").json()["models"]] == ["b", "c"]
        assert len(m.engines["b"]) == 2  # loaded again, a fresh engine


def test_memory_budget_evicts_by_estimate(tmp_path):
    m = Models("a", "b", memory={"a": 600, "b": 500})
    with serve(m, tmp_path, max_memory="1000B") as base:
        assert m.events == ["load a"]  # b would not fit beside a
        assert httpx.post(f"{base}{CHAT}", json=chat("b")).status_code == 200
        assert m.events == ["load a", "close a", "load b"]
        ps = httpx.get(f"{base}/api/ps").json()
        assert [(p["name"], p["size"]) for p in ps["models"]] == [("b", 500)]
        assert ps["limits"]["max_memory_bytes"] == 1000 and ps["limits"]["resident_bytes"] == 500


def test_a_model_larger_than_the_budget_is_refused_at_start(tmp_path):
    m = Models("a", "b", memory={"a": 100, "b": 5000})
    s = Settings.load(home=tmp_path, max_memory="1kB")
    with pytest.raises(ConfigError, match="b alone needs"):
        create_models_app(m.specs(s), s)


def test_two_models_under_one_name_are_refused(tmp_path):
    s = Settings.load(home=tmp_path)
    with pytest.raises(ConfigError, match="two models are served as 'a'"):
        ModelRegistry([ModelSpec("a", FakeEngine, s), ModelSpec("a", FakeEngine, s)],
                      lambda spec, eng: None)  # type: ignore[arg-type, return-value]


def test_concurrent_requests_for_an_unloaded_model_share_one_load(tmp_path):
    m = Models("a", "b")
    with serve(m, tmp_path, max_loaded_models=1) as base:
        m.gate["b"] = threading.Event()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(httpx.post, f"{base}{CHAT}", json=chat("b"), timeout=20)
                       for _ in range(4)]
            wait_for(lambda: state(base, "b") == "loading")
            time.sleep(0.2)  # every request is waiting on the one load
            m.gate["b"].set()
            results = [f.result() for f in futures]
        assert [r.status_code for r in results] == [200] * 4
        assert m.events.count("load b") == 1 and len(m.current("b").requests) == 4


def test_a_model_with_requests_in_flight_is_never_evicted(tmp_path):
    m = Models("a", "b")
    with serve(m, tmp_path, max_loaded_models=1) as base:
        slow = m.current("a")
        slow.delay_s = 0.05
        slow.queue_text(*["x"] * 30)  # about 1.5 s of streaming
        with httpx.Client(base_url=base, timeout=20) as client, \
                client.stream("POST", CHAT, json=chat("a", stream=True)) as stream:
            wait_for(lambda: len(slow.requests) == 1)
            r = httpx.post(f"{base}{CHAT}", json=chat("b"))
            err = error(r, 503)
            assert r.headers["retry-after"] == "1"
            assert "--max-loaded-models 1" in err["message"] and "in flight" in err["message"]
            assert not slow.closed and m.events == ["load a"]
            ps = httpx.get(f"{base}/api/ps").json()["models"]
            assert ps[0]["name"] == "a" and ps[0]["requests_in_flight"] == 1
            assert ps[0]["expires_at"] is None
            body = "".join(stream.iter_text())
        assert body.count("data: ") > 30 and "[DONE]" in body
        r = httpx.post(f"{base}{CHAT}", json=chat("b"), timeout=10)  # now a is idle
        assert r.status_code == 200
        assert m.events == ["load a", "close a", "load b"]


# --- keep-alive -----------------------------------------------------------------------------
def test_idle_models_unload_after_the_server_keep_alive_and_reload_on_demand(tmp_path):
    m = Models("a", "b")
    with serve(m, tmp_path, keep_alive="200ms") as base:
        assert httpx.post(f"{base}{CHAT}", json=chat("a")).status_code == 200
        card = httpx.get(f"{base}/v1/models/a").json()["status"]
        assert card["keep_alive_seconds"] == pytest.approx(0.2)
        assert card["expires_at"] is not None
        wait_for(lambda: state(base, "a") == "unloaded" and state(base, "b") == "unloaded",
                 timeout=3)
        assert all(e.closed for e in m.engines["a"])
        assert httpx.get(f"{base}/api/ps").json()["models"] == []
        assert httpx.get(f"{base}/health").json()["status"] == "ok"  # it loads on demand
        loads = len(m.engines["a"])
        r = httpx.post(f"{base}{CHAT}", json=chat("a"), timeout=10)
        assert r.status_code == 200 and len(m.engines["a"]) == loads + 1


def test_per_request_keep_alive_overrides_the_server_default(tmp_path):
    m = Models("a", "b")
    with serve(m, tmp_path, keep_alive="200ms") as base:
        # 0: unloaded right after the request
        assert httpx.post(f"{base}{CHAT}", json=chat("a", keep_alive=0)).status_code == 200
        wait_for(lambda: state(base, "a") == "unloaded", timeout=2)
        # negative: kept loaded past the server's 200 ms
        assert httpx.post(f"{base}{CHAT}", json=chat("b", keep_alive="-1")).status_code == 200
        time.sleep(0.6)
        assert state(base, "b") == "loaded"
        card = httpx.get(f"{base}/v1/models/b").json()["status"]
        assert card["keep_alive_seconds"] is None and card["expires_at"] is None
        # a duration string (Go's syntax) on the completions route
        r = httpx.post(f"{base}/v1/completions",
                       json={"model": "b", "prompt": "x", "keep_alive": "1h30m"})
        assert r.status_code == 200
        assert httpx.get(f"{base}/v1/models/b").json()["status"]["keep_alive_seconds"] == 5400


@pytest.mark.parametrize("value", ["5 minutes", "abc", "5mm", "", True, [], {"s": 1}, "1e999"])
def test_bad_keep_alive_is_a_400_on_keep_alive(tmp_path, value):
    m = Models("a")
    with serve(m, tmp_path) as base:
        err = error(httpx.post(f"{base}{CHAT}", json=chat("a", keep_alive=value)), 400,
                    "keep_alive")
        assert "keep_alive" in err["message"]
        assert m.current("a").requests == []


@pytest.mark.parametrize(("value", "seconds"), [
    ("5m", 300), ("30s", 30), ("1h", 3600), ("1h30m", 5400), ("250ms", 0.25), ("1.5h", 5400),
    (300, 300), (0.2, 0.2), ("300", 300), ("0", 0), (0, 0), ("-1", None), (-1, None),
    ("-5m", None)])
def test_parse_duration_as_ollama_reads_keep_alive(value, seconds):
    assert parse_duration(value) == (pytest.approx(seconds) if seconds is not None else None)


def test_bad_keep_alive_setting_is_refused_before_loading(tmp_path):
    with pytest.raises(GemmakitError, match="keep_alive"):
        Settings.load(home=tmp_path, keep_alive="soon")
    with pytest.raises(GemmakitError, match="max_memory"):
        Settings.load(home=tmp_path, max_memory="lots")


# --- status: /v1/models/{id}, /api/ps, /metrics ------------------------------------------------
def test_model_card_and_ps_give_size_context_slots_and_expiry(tmp_path):
    m = Models("a", "b", memory={"a": 123_000_000, "b": 456})
    with serve(m, tmp_path, max_loaded_models=1, keep_alive="10m", parallel=3) as base:
        card = httpx.get(f"{base}/v1/models/a").json()
        assert card["id"] == "a" and card["context_length"] == 512 and card["engine"] == "fake"
        st = card["status"]
        assert st["state"] == "loaded" and st["size"] == 123_000_000
        assert st["memory_estimate_bytes"] == 123_000_000
        assert st["slots"] == 1  # the fake engine has no batching: one sequence at a time
        assert st["keep_alive_seconds"] == 600 and st["expires_at"].endswith("+00:00")
        b = httpx.get(f"{base}/v1/models/b").json()
        assert b["status"]["state"] == "unloaded" and b["status"]["size"] == 0
        assert "engine" not in b
        ps = httpx.get(f"{base}/api/ps").json()
        assert [p["name"] for p in ps["models"]] == ["a"]
        p = ps["models"][0]
        for k in ("name", "model", "size", "size_vram", "expires_at", "context_length", "slots",
                  "state", "requests_in_flight", "keep_alive_seconds", "details"):
            assert k in p, k
        assert p["size_vram"] == 0 and p["context_length"] == 512
        assert ps["limits"] == {"max_loaded_models": 1, "max_memory_bytes": None,
                                "keep_alive_seconds": 600, "resident_bytes": 123_000_000}


def test_metrics_count_loaded_models_and_label_each_model(tmp_path):
    m = Models("a", "b")
    with serve(m, tmp_path, max_loaded_models=1) as base:
        text = httpx.get(f"{base}/metrics").text
        assert "gemmakit_models_loaded 1.0" in text
        assert 'gemmakit_requests_total{model="b",status="200"} 0.0' in text  # from start-up
        assert httpx.post(f"{base}{CHAT}", json=chat("b")).status_code == 200
        text = httpx.get(f"{base}/metrics").text
        assert 'gemmakit_requests_total{model="b",status="200"} 1.0' in text
        assert 'gemmakit_requests_total{model="a",status="200"} 0.0' in text
        assert "gemmakit_models_loaded 1.0" in text


def test_a_scoped_key_uses_and_sees_only_its_models(tmp_path):
    home = tmp_path / "home"
    store = KeyStore(home)
    _, only_b = store.create("only-b", models=["b"])
    store.close()
    m = Models("a", "b")
    with serve(m, home, auth=True) as base:
        h = {"Authorization": f"Bearer {only_b}"}
        assert httpx.post(f"{base}{CHAT}", json=chat("b"), headers=h).status_code == 200
        error(httpx.post(f"{base}{CHAT}", json=chat("a"), headers=h), 403, "model")
        assert [d["id"] for d in httpx.get(f"{base}/v1/models", headers=h).json()["data"]] \
            == ["b"]
        error(httpx.get(f"{base}/v1/models/a", headers=h), 404, "model")
        assert [p["name"] for p in httpx.get(f"{base}/api/ps", headers=h).json()["models"]] \
            == ["b"]
        assert httpx.get(f"{base}/api/ps").status_code == 401  # behind --auth like /v1


# --- drain and shutdown -------------------------------------------------------------------------
def test_drain_drains_every_loaded_engine_and_shutdown_closes_all(tmp_path):
    import asyncio

    from fastapi.testclient import TestClient

    from gemmakit.server.app import drain

    drained: list[str] = []

    class Draining(Closing):
        async def drain(self, timeout: float) -> None:
            drained.append(self.model)

    m = Models("a", "b", "c")
    s = Settings.load(home=tmp_path, max_loaded_models=2)
    specs = [ModelSpec(n, (lambda n=n: Draining(m, n)), s) for n in m.names]
    app = create_models_app(specs, s)
    with TestClient(app) as c:
        wait_for(lambda: c.get("/health").status_code == 200)
        c.portal.call(drain, app, 1.0)  # type: ignore[union-attr]
        assert sorted(drained) == ["a", "b"]  # the loaded ones; c never loaded
        r = c.post(CHAT, json=chat("c"))
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert c.get("/health").json()["status"] == "draining"
    assert sorted(e for e in m.events if e.startswith("close")) == ["close a", "close b"]
    assert asyncio.iscoroutinefunction(drain)


# --- naming and `gemmakit ps` ---------------------------------------------------------------
@pytest.mark.parametrize(("spec", "split"), [
    ("gemma-3-270m", (None, "gemma-3-270m")), ("small=gemma-3-270m", ("small", "gemma-3-270m")),
    ("t=/models/a=b.gguf", ("t", "/models/a=b.gguf")), ("./a=b.gguf", (None, "./a=b.gguf")),
    ("/models/a=b.gguf", (None, "/models/a=b.gguf")), ("=x", (None, "=x")), ("x=", (None, "x="))])
def test_model_names_split_from_their_model(spec, split):
    from gemmakit.compose import split_model

    assert split_model(spec) == split


def test_gemmakit_ps_table_reads_like_ollama_ps():
    from datetime import UTC, datetime, timedelta

    from gemmakit.cli.ps import table

    now = datetime(2026, 1, 1, tzinfo=UTC)

    def row(name, **kw):
        return {"name": name, "size": 291_000_000, "context_length": 1024, "slots": 2,
                "requests_in_flight": 0, "details": {"engine": "llamacpp"}, "state": "loaded",
                "expires_at": None, **kw}

    body = {"models": [row("a"), row("b", expires_at=(now + timedelta(minutes=4)).isoformat()),
                       row("c", requests_in_flight=2, expires_at=None)]}
    lines = table(body, now).splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "CONTEXT", "SLOTS", "REQUESTS", "ENGINE", "UNTIL"]
    assert lines[1].split() == ["a", "291", "MB", "1024", "2", "0", "llamacpp", "Forever"]
    assert lines[2].endswith("4 minutes from now") and lines[3].endswith("in use")
