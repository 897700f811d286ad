"""`gemmakit bench`: single-stream speed of gemmakit against bare llama-cpp-python, side by side.

Each phase runs in its own process, one after the other (never two at once: llama.cpp's threads
spin, and a second busy process halves the first's speed), so load time and peak RSS belong to
that phase alone:

1. bare   — llama_cpp.Llama with the same context, batch and thread settings; `Llama.generate`.
2. engine — gemmakit's LlamaCppEngine, through its async stream.
3. http   — `gemmakit serve` in a subprocess, streamed over HTTP; only the added time to first
            token is measured here (client-side TTFT minus the engine's own, same short prompt).

Prefill: a 512-token prompt, tokens/s = prompt tokens / time to first token. Decode: 128 tokens
with end-of-generation ignored, tokens/s = 127 / (last token time - first token time). Each figure
is the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_FILLER = ("The history of the printing press begins in the fifteenth century, when movable type "
           "changed how knowledge travelled across Europe. Scholars, merchants and priests ")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gemma-3-270m", help="Alias or .gguf path.")
    p.add_argument("--home", default=None, help="Data directory (default: GEMMAKIT_HOME).")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--context-length", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="Runs per figure (median reported).")
    p.add_argument("--ttft-requests", type=int, default=30,
                   help="Short-prompt requests for the HTTP time-to-first-token overhead.")
    p.add_argument("--skip-http", action="store_true", help="Skip the HTTP phase.")
    p.add_argument("--json", action="store_true", help="Print JSON only.")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _prompt_ids(tokenize, n: int, bos: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n - 1:
        ids += tokenize(_FILLER)
    return [bos, *ids[: n - 1]]


def _decode_rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0])


# --- phases (each in a fresh process) ---------------------------------------------------------
def _phase_bare(cfg: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(cfg["path"], n_ctx=cfg["context_length"], n_batch=cfg["batch_size"],
                          n_ubatch=cfg["batch_size"], n_threads=cfg["threads"],
                          n_threads_batch=cfg["threads"], verbose=False)
    load_s = time.perf_counter() - t0
    prompt = _prompt_ids(lambda s: llm.tokenize(s.encode(), add_bos=False), cfg["prompt_tokens"],
                         llm.token_bos())
    ttft, decode = [], []
    for _ in range(cfg["repeats"]):
        llm.reset()
        times = []
        t0 = time.perf_counter()
        # Greedy; Llama.generate never stops by itself, so end-of-generation is ignored.
        for _tok in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                 repeat_penalty=1.0):
            times.append(time.perf_counter())
            if len(times) == cfg["gen_tokens"]:
                break
        ttft.append(times[0] - t0)
        decode.append(_decode_rate(times))
    short = _prompt_ids(lambda s: llm.tokenize(s.encode(), add_bos=False), 16, llm.token_bos())
    return _summary(load_s, ttft, decode, cfg, extra={"short_prompt_ids": short})


def _phase_engine(cfg: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    from gemmakit.engines.llamacpp import LlamaCppEngine
    from gemmakit.types import GenerationRequest, SamplingParams

    t0 = time.perf_counter()
    eng = LlamaCppEngine(cfg["path"], context_length=cfg["context_length"],
                         threads=cfg["threads"], batch_size=cfg["batch_size"])
    load_s = time.perf_counter() - t0
    prompt = _prompt_ids(eng.tokenize, cfg["prompt_tokens"], 2)

    async def run(ids: list[int], n: int) -> list[float]:
        sp = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        times = []
        t0 = time.perf_counter()
        async for chunk in eng.stream(GenerationRequest(prompt_tokens=ids, sampling=sp,
                                                        request_id="bench")):
            times += [time.perf_counter()] * len(chunk.token_ids)
        return [t0, *times]

    async def main() -> dict[str, Any]:
        ttft, decode = [], []
        for _ in range(cfg["repeats"]):
            t = await run(prompt, cfg["gen_tokens"])
            ttft.append(t[1] - t[0])
            decode.append(_decode_rate(t[1:]))
        short_ttft = []
        for _ in range(cfg["ttft_requests"]):
            t = await run(cfg["short_prompt_ids"], 1)
            short_ttft.append(t[1] - t[0])
        await eng.aclose()
        return _summary(load_s, ttft, decode, cfg,
                        extra={"short_prompt_ttft_p50_s": statistics.median(short_ttft)})

    return asyncio.run(main())


def _summary(load_s: float, ttft: list[float], decode: list[float], cfg: dict[str, Any],
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    ttft_s = statistics.median(ttft)
    return {"load_s": round(load_s, 3), "ttft_s": round(ttft_s, 4),
            "prefill_tokens_per_s": round(cfg["prompt_tokens"] / ttft_s, 1),
            "decode_tokens_per_s": round(statistics.median(decode), 2),
            "decode_runs_tokens_per_s": [round(d, 2) for d in decode],
            "peak_rss_bytes": _peak_rss_bytes(), **(extra or {})}


def _run_phase(fn, cfg: dict[str, Any]) -> dict[str, Any]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, (cfg,))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _phase_http(cfg: dict[str, Any]) -> dict[str, Any]:
    import httpx

    port = _free_port()
    env = {**os.environ, "GEMMAKIT_HOME": cfg["home"]}
    cmd = [sys.executable, "-m", "gemmakit.cli.main", "serve", "--model", cfg["path"],
           "--served-model-name", "bench", "--port", str(port),
           "--context-length", str(cfg["context_length"]), "--threads", str(cfg["threads"]),
           "--batch-size", str(cfg["batch_size"]), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=60) as client:
            deadline = time.time() + 120
            while True:
                try:
                    if client.get(f"{base}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the server did not become healthy")
                time.sleep(0.1)
            body = {"model": "bench", "prompt": cfg["short_prompt_ids"], "max_tokens": 1,
                    "temperature": 0, "stream": True, "ignore_eos": True}
            ttft = []
            for i in range(cfg["ttft_requests"] + 2):
                t0 = time.perf_counter()
                with client.stream("POST", f"{base}/v1/completions", json=body) as r:
                    r.raise_for_status()
                    lines = r.iter_lines()
                    for line in lines:
                        if line.startswith("data: {"):
                            if i >= 2:  # two warm-up requests
                                ttft.append(time.perf_counter() - t0)
                            break
                    for _ in lines:  # drain to [DONE]
                        pass
        rss = _proc_peak_rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"short_prompt_ttft_p50_s": statistics.median(ttft),
            "short_prompt_ttft_p99_s": sorted(ttft)[min(len(ttft) - 1, int(len(ttft) * 0.99))],
            "server_peak_rss_bytes": rss}


def _proc_peak_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run(ns: argparse.Namespace) -> int:
    from gemmakit.catalog import resolve
    from gemmakit.settings import Settings

    settings = Settings.load(**({"home": ns.home} if ns.home else {}))
    ref = resolve(ns.model, settings.models_dir, progress=not ns.json)
    cfg = {"path": str(ref.path), "home": str(settings.home), "threads": ns.threads,
           "context_length": ns.context_length, "batch_size": ns.batch_size,
           "prompt_tokens": ns.prompt_tokens, "gen_tokens": ns.gen_tokens,
           "repeats": ns.repeats, "ttft_requests": ns.ttft_requests}
    log = (lambda *a: None) if ns.json else (lambda *a: print(*a, file=sys.stderr))
    log("bench: bare llama-cpp-python …")
    bare = _run_phase(_phase_bare, cfg)
    cfg["short_prompt_ids"] = bare.pop("short_prompt_ids")
    log("bench: gemmakit engine …")
    engine = _run_phase(_phase_engine, cfg)
    http = None
    if not ns.skip_http:
        log("bench: gemmakit HTTP server …")
        http = _phase_http(cfg)
    ratios = {
        "decode_gemmakit_over_bare": round(engine["decode_tokens_per_s"]
                                           / bare["decode_tokens_per_s"], 3),
        "prefill_gemmakit_over_bare": round(engine["prefill_tokens_per_s"]
                                            / bare["prefill_tokens_per_s"], 3),
    }
    if http:
        ratios["http_ttft_overhead_p50_ms"] = round(
            (http["short_prompt_ttft_p50_s"] - engine["short_prompt_ttft_p50_s"]) * 1000, 2)
    report = {
        "model": ref.name, "model_path": str(ref.path),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": {k: cfg[k] for k in ("threads", "context_length", "batch_size",
                                         "prompt_tokens", "gen_tokens", "repeats",
                                         "ttft_requests")},
        "bare_llama_cpp": bare, "gemmakit_engine": engine, "gemmakit_http": http,
        "ratios": ratios,
        "targets": {
            "decode_ratio_ge_0.95": ratios["decode_gemmakit_over_bare"] >= 0.95,
            "prefill_ratio_ge_0.95": ratios["prefill_gemmakit_over_bare"] >= 0.95,
            **({"http_ttft_overhead_le_5ms": ratios["http_ttft_overhead_p50_ms"] <= 5.0}
               if http else {}),
        },
    }
    if ns.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0


def _print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table("figure", "bare llama-cpp-python", "gemmakit", "ratio")
    b, g, ra = r["bare_llama_cpp"], r["gemmakit_engine"], r["ratios"]
    t.add_row("prefill tokens/s", str(b["prefill_tokens_per_s"]), str(g["prefill_tokens_per_s"]),
              str(ra["prefill_gemmakit_over_bare"]))
    t.add_row("decode tokens/s", str(b["decode_tokens_per_s"]), str(g["decode_tokens_per_s"]),
              str(ra["decode_gemmakit_over_bare"]))
    t.add_row("time to first token (s)", str(b["ttft_s"]), str(g["ttft_s"]), "")
    t.add_row("load (s)", str(b["load_s"]), str(g["load_s"]), "")
    t.add_row("peak RSS (MB)", f"{b['peak_rss_bytes'] / 1e6:.0f}",
              f"{g['peak_rss_bytes'] / 1e6:.0f}", "")
    if r["gemmakit_http"]:
        t.add_row("HTTP adds to TTFT, p50 (ms)", "", str(ra["http_ttft_overhead_p50_ms"]), "")
    Console().print(t)
    Console().print(r["targets"])
