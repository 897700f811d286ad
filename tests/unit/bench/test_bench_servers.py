"""`gemmakit bench --servers`: parsing the items, the ratio and target arithmetic, the usage check
and prompt calibration against a real server (the fake engine behind the real app)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from gemmakit.bench import servers as sv
from gemmakit.errors import ConfigError, GemmakitError
from tests.conftest import FakeEngine, uvicorn_thread


# --- parsing ------------------------------------------------------------------------------------
def test_parse_servers_kinds_and_url_bases():
    items = sv.parse_servers("llamacpp, vllm-server,http://127.0.0.1:8000/v1/,https://x.org")
    assert [(i.label, i.kind) for i in items] == [
        ("llamacpp", "gemmakit"), ("vllm-server", "vllm-server"),
        ("http://127.0.0.1:8000/v1/", "url"), ("https://x.org", "url")]
    assert items[2].base == "http://127.0.0.1:8000"  # routes are added to the base
    assert items[3].base == "https://x.org"


@pytest.mark.parametrize("text, needle", [
    ("llamacpp,ollama", "unknown item 'ollama'"),
    ("llamacpp,llamacpp", "listed twice"),
    (" , ", "at least one"),
    ("http://", "unknown item"),
])
def test_parse_servers_refuses(text, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        sv.parse_servers(text)
    assert e.value.param == "servers"


def test_parse_counts():
    assert sv.parse_counts("1,8", "streams") == [1, 8]
    assert sv.parse_counts("2048, 512", "prefill-tokens") == [2048, 512]
    for bad in ("1,x", "0,8", "8,8", ""):
        with pytest.raises(ConfigError) as e:
            sv.parse_counts(bad, "streams")
        assert e.value.param == "streams"


def test_reference_default_and_choice():
    items = sv.parse_servers("llamacpp,vllm,vllm-server")
    assert sv.reference_of(items, None) == "vllm-server"
    assert sv.reference_of(sv.parse_servers("transformers,llamacpp"), None) == "transformers"
    assert sv.reference_of(items, "vllm") == "vllm"
    with pytest.raises(ConfigError, match="not one of --servers") as e:
        sv.reference_of(items, "transformers")
    assert e.value.param == "reference"


# --- ratios and targets -------------------------------------------------------------------------
def _figures(agg1, agg8, ttft1, ttft8, prefill, gemmakit=True):
    def level(agg, ttft):
        return {"aggregate_tokens_per_s": agg, "per_stream_tokens_per_s": agg / 2,
                "ttft_p50_s": ttft, "ttft_p99_s": ttft * 2, "tpot_p50_s": 1 / agg}

    return {"gemmakit": gemmakit, "streams": {"1": level(agg1, ttft1), "8": level(agg8, ttft8)},
            "prefill": {n: {"prompt_tokens_per_s": v, "ttft_p50_s": int(n) / v}
                        for n, v in prefill.items()}}


def test_ratios_are_each_figure_over_the_reference():
    figs = {"vllm-server": _figures(100.0, 400.0, 0.050, 0.200, {"512": 1000.0, "2048": 800.0},
                                    gemmakit=False),
            "vllm": _figures(97.0, 380.0, 0.053, 0.210, {"512": 990.0, "2048": 700.0}),
            "http://other": _figures(50.0, 100.0, 0.5, 1.0, {"512": 10.0}, gemmakit=False)}
    r = sv.ratios(figs, "vllm-server")
    assert set(r) == {"vllm", "http://other"}  # the reference is not over itself
    assert r["vllm"]["streams"]["1"]["aggregate_tokens_per_s"] == 0.97
    assert r["vllm"]["streams"]["8"]["aggregate_tokens_per_s"] == 0.95
    assert r["vllm"]["streams"]["8"]["ttft_p50_s"] == 1.05
    assert r["vllm"]["streams"]["1"]["tpot_p50_s"] == pytest.approx(100 / 97, abs=1e-3)
    assert r["vllm"]["prefill"]["2048"]["prompt_tokens_per_s"] == 0.875
    assert r["vllm"]["ttft_added_ms"] == 3.0
    assert "ttft_added_ms" not in r["http://other"]  # not a gemmakit server
    assert set(r["http://other"]["prefill"]) == {"512"}  # only what both measured


def test_targets_apply_by_server_and_reference():
    figs = {"vllm-server": _figures(100.0, 400.0, 0.050, 0.200, {"512": 1000.0, "2048": 800.0},
                                    gemmakit=False),
            "vllm": _figures(97.0, 370.0, 0.054, 0.210, {"512": 990.0, "2048": 700.0}),
            "llamacpp": _figures(140.0, 330.0, 0.040, 0.290, {"512": 600.0, "2048": 300.0}),
            "transformers": _figures(10.0, 20.0, 0.5, 1.0, {"512": 10.0})}
    t = sv.targets(sv.ratios(figs, "vllm-server"), "vllm-server")
    assert t["vllm"] == {"streams_1_aggregate_ge_0.95": True,
                         "streams_8_aggregate_ge_0.95": False,  # 0.925
                         "ttft_added_le_5ms": True}  # 4 ms
    assert t["llamacpp"] == {"streams_1_aggregate_ge_1.3": True, "streams_8_aggregate_ge_0.8": True,
                             "streams_8_ttft_p50_le_1.5": True, "prefill_512_ge_0.5": True,
                             "prefill_2048_ge_0.5": False}
    assert "transformers" not in t  # the issues set no target for it
    # Another reference: the issues' targets (all over vLLM's own server) do not apply.
    assert sv.targets(sv.ratios(figs, "transformers"), "transformers") == {}


def test_targets_only_where_measured():
    figs = {"vllm-server": _figures(100.0, 400.0, 0.05, 0.2, {}, gemmakit=False),
            "llamacpp": _figures(140.0, 330.0, 0.04, 0.29, {})}
    del figs["vllm-server"]["streams"]["8"], figs["llamacpp"]["streams"]["8"]
    t = sv.targets(sv.ratios(figs, "vllm-server"), "vllm-server")
    assert t == {"llamacpp": {"streams_1_aggregate_ge_1.3": True}}


def test_table_shows_values_ratios_and_targets():
    figs = {"vllm-server": _figures(100.0, 400.0, 0.05, 0.2, {"512": 1000.0}, gemmakit=False),
            "llamacpp": _figures(140.0, 330.0, 0.04, 0.29, {"512": 600.0})}
    for f in figs.values():
        f["idle_cpu_percent"] = 0.5
    r = sv.ratios(figs, "vllm-server")
    text = sv.table({"servers": figs, "reference": "vllm-server", "ratios": r,
                     "targets": sv.targets(r, "vllm-server"),
                     "settings": {"streams": [1, 8], "prefill_tokens": [512]}})
    assert "vllm-server (reference)" in text
    assert "140 (1.4x)" in text and "600 (0.6x)" in text
    assert "prefill_512_ge_0.5=yes" in text


# --- the usage check and the prompts, against a real server ------------------------------------
def test_usage_check_refuses_short_or_missing_usage():
    ok = {"errors": 0, "refused": 0, "usage": [{"completion_tokens": 8}] * 2, "error_detail": None}
    sv._check_usage("s", "2 streams", ok, 8, 2)
    with pytest.raises(GemmakitError, match="completion_tokens = 5, expected 8"):
        sv._check_usage("s", "x", {**ok, "usage": [{"completion_tokens": 8},
                                                   {"completion_tokens": 5}]}, 8, 2)
    with pytest.raises(GemmakitError, match="no usage"):
        sv._check_usage("s", "x", {**ok, "usage": [{}, {}]}, 8, 2)
    with pytest.raises(GemmakitError, match="1 refused of 2 requests .HTTP 429"):
        sv._check_usage("s", "x", {**ok, "refused": 1, "usage": ok["usage"][:1],
                                   "error_detail": "HTTP 429: full"}, 8, 2)


@pytest.fixture
def fake_server(tmp_path):
    from gemmakit.server.app import create_app
    from gemmakit.settings import Settings

    engine = FakeEngine(context_length=4096)
    app = create_app("gemma-test", lambda: engine, Settings.load(home=tmp_path / "home"))
    with uvicorn_thread(app) as base_url:
        yield engine, sv.Server(sv.Item(base_url, "url"), base_url)


def test_url_server_model_and_kind_read_from_the_server(fake_server):
    _engine, server = fake_server
    sv._wait_ready(server, deadline=0)
    assert server.model == "gemma-test"
    assert server.gemmakit  # its /tokenizer_info names gemmakit


def test_calibrated_prompt_is_the_longest_within_n(fake_server):
    engine, server = fake_server
    server.model = "gemma-test"
    p = sv.calibrate(server, 300)
    assert p.counted_by == "tokenize"

    def count(words):  # as the server counts: the fake engine's ids, and <bos>
        return len(engine.tokenize(sv.PrefillPrompt(300, words, "tokenize").text(0))) + 1

    assert count(p.words) <= 300 < count(p.words + 1)
    assert p.text(1) != p.text(2) and len(p.text(1)) == len(p.text(99_999_999))


def test_a_server_that_stops_early_makes_the_run_invalid(fake_server):
    _engine, server = fake_server  # the fake engine answers "ok" whatever max_tokens says
    server.model = "gemma-test"
    cfg = {"gen_tokens": 8, "requests_per_stream": 1}
    with pytest.raises(GemmakitError, match="expected 8 .ignore_eos.; the run is invalid"):
        sv._decode_round(server, 2, cfg, 0)


# --- idle CPU -----------------------------------------------------------------------------------
def test_idle_cpu_of_a_sleeping_process_and_of_an_unknown_one():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        got = sv.idle_cpu(proc.pid, seconds=1.0)
    finally:
        proc.kill()
        proc.wait()
    assert got["idle_cpu_percent"] is not None and 0 <= got["idle_cpu_percent"] < 20
    assert 0 <= got["machine_cpu_percent"] <= 100
    assert sv.idle_cpu(None, seconds=0.1)["idle_cpu_percent"] is None


def test_listener_pid_of_a_loopback_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert sv._listener_pid(f"http://127.0.0.1:{port}") == os.getpid()
    assert sv._listener_pid("https://example.org") is None
