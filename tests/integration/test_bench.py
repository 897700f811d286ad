"""`gemmakit bench` runs end to end and reports what it promises (figures are for the closing
notes, measured on a quiet machine; here only their presence and consistency are checked)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from .conftest import start_server, stop_server
from .test_cli import gk

pytestmark = pytest.mark.integration


def test_single_stream_bench_json(gemmakit_home, model_path):
    r = gk(gemmakit_home, "bench", "--json", "--repeats", "1", "--gen-tokens", "8",
           "--prompt-tokens", "64", "--ttft-requests", "2", "--context-length", "512",
           timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    for side in ("bare_llama_cpp", "gemmakit_engine"):
        assert rep[side]["decode_tokens_per_s"] > 0 and rep[side]["prefill_tokens_per_s"] > 0
        assert rep[side]["peak_rss_bytes"] > 100e6  # the model is mapped in
    assert set(rep["ratios"]) >= {"decode_gemmakit_over_bare", "prefill_gemmakit_over_bare",
                                  "http_added_ttft_p50_ms"}
    assert set(rep["targets"]) == {"decode_ratio_ge_0.95", "prefill_ratio_ge_0.95",
                                   "http_added_ttft_le_5ms"}


def test_concurrency_bench_json_and_plot(gemmakit_home, model_path, tmp_path):
    png = tmp_path / "bench.png"
    r = gk(gemmakit_home, "bench", "--json", "--concurrency", "1,2", "--gen-tokens", "8",
           "--requests-per-stream", "1", "--rounds", "2", "--context-length", "256",
           "--plot", str(png),
           timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert [lv["concurrency"] for lv in rep["levels"]] == [1, 2]
    for lv in rep["levels"]:
        assert lv["refused"] == 0 and lv["errors"] == 0
        assert lv["completion_tokens"] == lv["concurrency"] * 8 * 2  # ignore_eos: exact
        # Two rounds, each between two runs of the raw references (the clients' workload, and
        # the decode-only ceiling).
        assert len(lv["raw_batched_runs_tokens_per_s"]) == 3
        assert len(lv["raw_decode_only_runs_tokens_per_s"]) == 3
        assert len(lv["gemmakit_over_raw_rounds"]) == 2
        assert lv["raw_batched_tokens_per_s"] > 0 and lv["aggregate_tokens_per_s"] > 0
        assert lv["raw_decode_only_tokens_per_s"] > 0
        assert lv["gemmakit_over_raw_decode_only"] > 0
        assert lv["ttft_p50_s"] <= lv["ttft_p99_s"]
        assert 0 < lv["burst_ttft_p50_s"] <= lv["burst_ttft_max_s"]
    assert rep["levels"][0]["stagger_s"] == 0 < rep["levels"][1]["stagger_s"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prefix_reuse_bench(gemmakit_home, model_path):
    r = gk(gemmakit_home, "bench", "--prefix-reuse", "--context-length", "1024", timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert len(rep["turns"]) == 6
    for t in rep["turns"][1:]:
        # Everything but the new user turn comes from the cache.
        assert t["cached_tokens"] >= t["prompt_tokens"] - 40


def test_servers_side_by_side_json(gemmakit_home, model_path, tmp_path):
    """A started gemmakit server (llamacpp) and a running one given by URL, one run, the
    reference the first item: figures, the usage checks and the ratio arithmetic."""
    other = start_server(gemmakit_home, tmp_path, "--context-length", "1024", "--parallel", "2")
    url = other.base_url
    try:
        r = gk(gemmakit_home, "bench", "--servers", f"llamacpp,{url}", "--streams", "1,2",
               "--gen-tokens", "8", "--prefill-tokens", "64", "--rounds", "1",
               "--requests-per-stream", "1", "--context-length", "1024", "--json",
               timeout=600)
    finally:
        stop_server(other)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["reference"] == "llamacpp"
    assert set(rep["servers"]) == {"llamacpp", url}
    for s in rep["servers"].values():
        for c in (1, 2):
            lv = s["streams"][str(c)]
            assert lv["usage_checked"] and lv["requests"] == c
            assert lv["completion_tokens"] == c * 8  # ignore_eos: exactly --gen-tokens each
            assert lv["aggregate_tokens_per_s"] > 0 and lv["per_stream_tokens_per_s"] > 0
            assert 0 < lv["ttft_p50_s"] <= lv["ttft_p99_s"] and lv["tpot_p50_s"] > 0
        pre = s["prefill"]["64"]
        assert pre["counted_by"] == "tokenize" and 56 <= pre["prompt_tokens"] <= 64
        assert pre["prompt_tokens_per_s"] > 0 and pre["ttft_p50_s"] > 0
        assert s["idle_cpu_percent"] is not None and s["idle_cpu_percent"] >= 0
        assert s["gemmakit"]
    started, given = rep["servers"]["llamacpp"], rep["servers"][url]
    assert started["kind"] == "gemmakit" and given["kind"] == "url"
    cmd = started["command"]
    assert cmd[cmd.index("--engine") + 1] == "llamacpp"
    assert cmd[cmd.index("--parallel") + 1] == "2"  # the largest level
    assert given["model"] == "gemma-3-270m" and given["command"] is None  # read, not started
    ratio = rep["ratios"][url]
    assert set(rep["ratios"]) == {url}
    for c in ("1", "2"):
        for f, v in ratio["streams"][c].items():
            assert v == round(given["streams"][c][f] / started["streams"][c][f], 3)
    assert ratio["prefill"]["64"]["prompt_tokens_per_s"] == round(
        given["prefill"]["64"]["prompt_tokens_per_s"]
        / started["prefill"]["64"]["prompt_tokens_per_s"], 3)
    assert ratio["ttft_added_ms"] == round(
        (given["streams"]["1"]["ttft_p50_s"] - started["streams"]["1"]["ttft_p50_s"]) * 1000, 2)
    assert rep["targets"] == {}  # the issues' targets are over vLLM's own server
    with pytest.raises(httpx.TransportError):  # the bench stopped the server it started
        httpx.get(f"{started['base_url']}/health", timeout=5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_servers_bench_stops_its_servers_when_interrupted(gemmakit_home, model_path, sig):
    # As a foreground process started from a terminal: a run of the suite that was itself
    # started in the background of a non-interactive shell has SIGINT ignored, its children
    # inherit that, and a Python started with SIGINT ignored never turns it into
    # KeyboardInterrupt (the bench would then run to its end, as a background job should).
    bench = subprocess.Popen([sys.executable, "-m", "gemmakit", "bench", "--servers", "llamacpp",
                              "--json"], env={**os.environ, "GEMMAKIT_HOME": str(gemmakit_home)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        started: list[psutil.Process] = []
        while not started and time.time() < deadline and bench.poll() is None:
            started = [c for c in psutil.Process(bench.pid).children()
                       if "serve" in c.cmdline()]
            time.sleep(0.1)
        assert started, "the bench started no server"
        bench.send_signal(sig)  # while it waits for the server to be ready
        rc = bench.wait(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        alive = [c for c in started if c.is_running()]
        for c in alive:  # not the bench's job any more: do not leave it to the next test
            c.kill()
    assert rc == (130 if sig == signal.SIGINT else 128 + signal.SIGTERM)
    assert not alive
