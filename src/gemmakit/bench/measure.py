"""`gemmakit bench`: single-stream speed of gemmakit against bare llama-cpp-python, side by side.

Each contender lives in its own process, so its load time and peak RSS are its own:

- bare   — llama_cpp.Llama with the same context, batch and thread settings; `Llama.generate`;
- engine — gemmakit's LlamaCppEngine, through its async stream;
- http   — `gemmakit serve` in a subprocess, streamed over HTTP.

Only one runs at a time (llama.cpp's threads spin: two busy processes halve each other), and they
take turns run by run — bare, engine, bare, engine… — so drift in this shared machine's speed hits
both alike. Prefill: a 512-token prompt, tokens/s = prompt tokens / time to first token. Decode:
128 tokens with end-of-generation ignored, tokens/s = 127 / (last token time - first token time).
HTTP: the time to first token of a 16-token prompt through the server minus the engine's own,
alternating too. Figures are medians over --repeats runs after one uncounted warm-up round; the
ratios are medians of the per-round paired ratios (the ratio of medians is reported too).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
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
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="Threads for both contenders (default: all cores).")
    p.add_argument("--context-length", type=int, default=4096, help="Context for both.")
    p.add_argument("--batch-size", type=int, default=512, help="n_batch for both.")
    p.add_argument("--prompt-tokens", type=int, default=512, help="Prefill prompt length.")
    p.add_argument("--gen-tokens", type=int, default=128, help="Tokens decoded per run.")
    p.add_argument("--repeats", type=int, default=10,
                   help="Runs per figure after one warm-up run (median reported).")
    p.add_argument("--ttft-requests", type=int, default=30,
                   help="Short-prompt requests for the HTTP time-to-first-token overhead.")
    p.add_argument("--skip-http", action="store_true", help="Skip the HTTP phase.")
    p.add_argument("--json", action="store_true", help="Print JSON only.")
    g = p.add_argument_group("concurrency mode (continuous batching through the HTTP server)")
    g.add_argument("--concurrency", metavar="LIST",
                   help="Comma-separated concurrency levels, e.g. 1,2,4,8,16.")
    g.add_argument("--requests-per-stream", type=int, default=3,
                   help="Requests each concurrent client sends back to back.")
    p.add_argument("--parallel", type=int, default=None,
                   help="gemmakit's --parallel (default: the serve default; with --concurrency "
                        "or --servers: the largest level).")
    g.add_argument("--rounds", type=int, default=3,
                   help="Rounds per level, each between two runs of the raw reference; with "
                        "--servers: rounds in which every server is measured once, in turn "
                        "(medians reported).")
    g.add_argument("--max-queue", type=int, default=None, help="Server --max-queue.")
    g.add_argument("--plot", metavar="PNG", help="Write a throughput/latency plot.")
    s = p.add_argument_group("servers mode (OpenAI-compatible servers side by side, one run)")
    s.add_argument("--servers", metavar="LIST",
                   help="Comma-separated: llamacpp, transformers, vllm (gemmakit serve --engine "
                        "that, on --model), vllm-server (vLLM's own OpenAI server on the same "
                        "weights), or http(s):// URLs of running servers.")
    s.add_argument("--streams", default="1,8", metavar="LIST",
                   help="Concurrent streams per level (default: 1,8).")
    s.add_argument("--prefill-tokens", default="512,2048", metavar="LIST",
                   help="Prompt lengths for prefill tokens/s (default: 512,2048).")
    s.add_argument("--prefill-repeats", type=int, default=3,
                   help="Prompts per prefill length and round (median reported).")
    s.add_argument("--reference", default=None,
                   help="The server the ratios are over (default: vllm-server when listed, "
                        "else the first).")
    s.add_argument("--vllm-python", default=sys.executable,
                   help="The python that runs vllm and vllm-server (one with vllm installed; "
                        "default: this one).")
    s.add_argument("--api-key", default=None, help="Sent as a Bearer token to URL servers.")
    s.add_argument("--start-timeout", type=float, default=900.0,
                   help="Seconds for all started servers to become ready (vLLM takes minutes "
                        "on a small CPU).")
    p.add_argument("--prefix-reuse", action="store_true",
                   help="Time to first token per turn of a multi-turn chat, prefix cache on/off.")
    p.add_argument("--scoring", action="store_true",
                   help="Scoring a --prompt-tokens prompt (echo with logprobs: every prompt "
                        "token's logprob) against its plain prefill, on --engine.")
    p.add_argument("--constrained", action="store_true",
                   help="A token under a JSON-schema grammar against a free one (greedy, "
                        "--gen-tokens at most), on --engine.")
    p.add_argument("--prompt-lookup", type=int, default=None, metavar="K",
                   help="Prompt-lookup decoding drafting up to K tokens against plain decoding "
                        "(one stream, greedy, --gen-tokens a reply) on extractive and free "
                        "prompts, on the llama.cpp engine.")
    p.add_argument("--engine", default="llamacpp",
                   help="With --scoring or --constrained: the engine to measure (llamacpp, "
                        "transformers).")


def _peak_rss_bytes() -> int:
    from gemmakit.catalog.measure import peak_rss_bytes

    return peak_rss_bytes()


def _prompt_ids(tokenize, n: int, bos: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n - 1:
        ids += tokenize(_FILLER)
    return [bos, *ids[: n - 1]]


def _decode_rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0])


# --- contenders: each lives in its own process and runs one measurement per command ------------
class _Bare:
    """Bare llama-cpp-python: `Llama.generate`, greedy (it never stops by itself, so
    end-of-generation is ignored, like gemmakit's `ignore_eos`)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(cfg["path"], n_ctx=cfg["context_length"],
                                   n_batch=cfg["batch_size"], n_ubatch=cfg["batch_size"],
                                   n_threads=cfg["threads"], n_threads_batch=cfg["threads"],
                                   verbose=False)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False)

    def timed(self, ids: list[int], n: int) -> list[float]:
        self.llm.reset()
        times = [time.perf_counter()]
        for _tok in self.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                      repeat_penalty=1.0):
            times.append(time.perf_counter())
            if len(times) > n:
                break
        return times


class _Engine:
    """gemmakit's LlamaCppEngine through its async stream, as the server uses it."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import asyncio

        from gemmakit.engines.llamacpp import LlamaCppEngine

        self.loop = asyncio.new_event_loop()
        # The serving configuration: the batching scheduler with `parallel` slots, one in use.
        # The prefix cache is off: every run prefills its prompt, as bare Llama does after reset.
        self.eng = LlamaCppEngine(cfg["path"], context_length=cfg["context_length"],
                                  threads=cfg["threads"], batch_size=cfg["batch_size"],
                                  parallel=cfg["parallel"], prefix_cache=False)

    def tokenize(self, text: str) -> list[int]:
        return self.eng.tokenize(text)

    def timed(self, ids: list[int], n: int) -> list[float]:
        from gemmakit.types import GenerationRequest, SamplingParams

        async def go() -> list[float]:
            sp = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
            times = [time.perf_counter()]
            async for chunk in self.eng.stream(GenerationRequest(prompt_tokens=ids, sampling=sp,
                                                                 request_id="bench")):
                times += [time.perf_counter()] * len(chunk.token_ids)
            return times

        return self.loop.run_until_complete(go())


def _contender_main(kind: str, cfg: dict[str, Any], conn) -> None:
    t0 = time.perf_counter()
    c: _Bare | _Engine = _Bare(cfg) if kind == "bare" else _Engine(cfg)
    conn.send(("loaded", time.perf_counter() - t0))
    while True:
        cmd, args = conn.recv()
        if cmd == "stop":
            conn.send(("peak_rss_bytes", _peak_rss_bytes()))
            return
        if cmd == "tokenize":
            conn.send(("ids", c.tokenize(*args)))
        elif cmd == "timed":
            conn.send(("times", c.timed(*args)))


class _Process:
    def __init__(self, kind: str, cfg: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_contender_main, args=(kind, cfg, child), daemon=True)
        self.proc.start()
        self.load_s = self._recv("loaded")

    def _recv(self, tag: str) -> Any:
        got, value = self.conn.recv()
        assert got == tag, (got, tag)
        return value

    def call(self, cmd: str, *args: Any) -> Any:
        self.conn.send((cmd, args))
        return self._recv({"tokenize": "ids", "timed": "times", "stop": "peak_rss_bytes"}[cmd])

    def stop(self) -> int:
        rss = self.call("stop")
        self.proc.join(timeout=30)
        return rss


def _summary(load_s: float, ttft: list[float], decode: list[float], cfg: dict[str, Any],
             peak_rss: int | None) -> dict[str, Any]:
    ttft_s = statistics.median(ttft)
    return {"load_s": round(load_s, 3), "ttft_s": round(ttft_s, 4),
            "prefill_tokens_per_s": round(cfg["prompt_tokens"] / ttft_s, 1),
            "decode_tokens_per_s": round(statistics.median(decode), 2),
            "decode_runs_tokens_per_s": [round(d, 2) for d in decode],
            "ttft_runs_s": [round(t, 4) for t in ttft],
            "peak_rss_bytes": peak_rss}


def _pause() -> None:
    time.sleep(0.3)  # let the previous contender's worker threads go idle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Http:
    """`gemmakit serve` in a subprocess; one streamed /v1/completions request per measurement."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import httpx

        port = _free_port()
        env = {**os.environ, "GEMMAKIT_HOME": cfg["home"]}
        cmd = [sys.executable, "-m", "gemmakit", "serve", "--model", cfg["path"],
               "--served-model-name", "bench", "--port", str(port),
               "--context-length", str(cfg["context_length"]), "--threads", str(cfg["threads"]),
               "--batch-size", str(cfg["batch_size"]), "--parallel", str(cfg["parallel"]),
               "--no-prefix-cache", "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(timeout=60)
        deadline = time.time() + 120
        while True:
            try:
                if self.client.get(f"{self.base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the gemmakit server did not become healthy")
            time.sleep(0.1)

    def ttft(self, ids: list[int]) -> float:
        body = {"model": "bench", "prompt": ids, "max_tokens": 1, "temperature": 0,
                "stream": True, "ignore_eos": True}
        t0 = time.perf_counter()
        first = None
        with self.client.stream("POST", f"{self.base}/v1/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if first is None and line.startswith("data: {"):
                    first = time.perf_counter() - t0
        assert first is not None
        return first

    def stop(self) -> int | None:
        rss = _proc_peak_rss(self.proc.pid)
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        return rss


def _proc_peak_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def measure(cfg: dict[str, Any], *, http: bool = True, log=lambda *a: None) -> dict[str, Any]:
    """Load both contenders, then alternate them run by run (bare, gemmakit, bare, …) so drift in
    the machine's speed hits both alike. One warm-up round is not counted."""
    log("bench: loading bare llama-cpp-python and the gemmakit engine …")
    bare = _Process("bare", cfg)
    engine = _Process("engine", cfg)
    server = _Http(cfg) if http else None
    try:
        prompt = bare.call("tokenize", _FILLER)
        assert prompt == engine.call("tokenize", _FILLER), "the tokenizers must agree"
        bos = 2
        long_ids = _prompt_ids(lambda _t: prompt, cfg["prompt_tokens"], bos)
        short_ids = long_ids[:16]
        runs: dict[str, dict[str, list[float]]] = {k: {"ttft": [], "decode": []}
                                                   for k in ("bare", "engine")}
        for r in range(cfg["repeats"] + 1):
            log(f"bench: round {r}/{cfg['repeats']} (0 = warm-up)")
            for name, proc in (("bare", bare), ("engine", engine)):
                _pause()
                t = proc.call("timed", long_ids, cfg["gen_tokens"])
                if r:
                    runs[name]["ttft"].append(t[1] - t[0])
                    runs[name]["decode"].append(_decode_rate(t[1:]))
        http_result = None
        if server is not None:
            log("bench: time to first token, engine alone vs through HTTP …")
            eng_ttft, http_ttft = [], []
            for r in range(cfg["ttft_requests"] + 2):
                _pause()
                t = engine.call("timed", short_ids, 1)
                e = t[1] - t[0]
                _pause()
                h = server.ttft(short_ids)
                if r >= 2:  # two warm-up pairs
                    eng_ttft.append(e)
                    http_ttft.append(h)
            http_result = {
                "short_prompt_tokens": len(short_ids),
                "engine_ttft_p50_s": round(statistics.median(eng_ttft), 5),
                "http_ttft_p50_s": round(statistics.median(http_ttft), 5),
                "http_ttft_p99_s": round(_p99(http_ttft), 5),
                "added_ttft_p50_ms": round((statistics.median(http_ttft)
                                            - statistics.median(eng_ttft)) * 1000, 2),
                "added_ttft_paired_p50_ms": round(statistics.median(
                    [h - e for h, e in zip(http_ttft, eng_ttft)]) * 1000, 2),
            }
    finally:
        bare_rss, engine_rss = bare.stop(), engine.stop()
        server_rss = server.stop() if server is not None else None
    out = {
        "bare_llama_cpp": _summary(bare.load_s, runs["bare"]["ttft"], runs["bare"]["decode"],
                                   cfg, bare_rss),
        "gemmakit_engine": _summary(engine.load_s, runs["engine"]["ttft"],
                                    runs["engine"]["decode"], cfg, engine_rss),
        "gemmakit_http": None if http_result is None else {**http_result,
                                                           "server_peak_rss_bytes": server_rss},
    }
    return out


def _p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


def run(ns: argparse.Namespace) -> int:
    from gemmakit.catalog import resolve
    from gemmakit.settings import Settings

    settings = Settings.load(**({"home": ns.home} if ns.home else {}))
    ref = resolve(ns.model, settings.models_dir, progress=not ns.json)
    cfg = {"path": str(ref.path), "home": str(settings.home), "threads": ns.threads,
           "context_length": ns.context_length, "batch_size": ns.batch_size,
           "prompt_tokens": ns.prompt_tokens, "gen_tokens": ns.gen_tokens,
           "repeats": ns.repeats, "ttft_requests": ns.ttft_requests,
           "parallel": ns.parallel or settings.parallel}
    log = (lambda *a: None) if ns.json else (lambda *a: print(*a, file=sys.stderr))
    if ns.scoring or ns.constrained or ns.prompt_lookup is not None:
        engine_settings = settings.model_copy(update={
            "model": ns.model, "engine": ns.engine, "threads": ns.threads,
            "context_length": ns.context_length, "parallel": 1})
        if ns.prompt_lookup is not None:
            from gemmakit.bench.lookup import run_lookup

            if ns.engine != "llamacpp" or not 1 <= ns.prompt_lookup <= 16:
                print("gemmakit bench: --prompt-lookup takes 1 to 16 draft tokens, on the "
                      "llamacpp engine", file=sys.stderr)
                return 2
            out = run_lookup(engine_settings, ns.prompt_lookup, ns.gen_tokens, ns.repeats)
        elif ns.scoring:
            from gemmakit.bench.scoring import run_scoring

            out = run_scoring(engine_settings, ns.prompt_tokens, ns.repeats)
        else:
            from gemmakit.bench.constrained import run_constrained

            out = run_constrained(engine_settings, ns.gen_tokens, ns.repeats)
        print(json.dumps(out, indent=2))
        return 0
    if ns.servers:
        from gemmakit.bench.servers import run_servers, table

        report = run_servers(ns, {**cfg, "format": ref.format}, ref.name)
        print(json.dumps(report, indent=2) if ns.json else table(report))
        return 0
    if ns.prefix_reuse:
        from gemmakit.bench.prefix import run_prefix

        print(json.dumps(run_prefix(cfg), indent=2))
        return 0
    if ns.concurrency:
        from gemmakit.bench.concurrency import run_concurrency

        report = run_concurrency(ns, cfg, ref.name)
        print(json.dumps(report, indent=2) if ns.json else _concurrency_table(report))
        return 0
    res = measure(cfg, http=not ns.skip_http, log=log)
    bare, engine, http = res["bare_llama_cpp"], res["gemmakit_engine"], res["gemmakit_http"]
    # Paired: each round's gemmakit run over the bare run just before it, then the median —
    # robust to the machine drifting between rounds. Ratio of medians given alongside.
    ratios = {
        "decode_gemmakit_over_bare": round(statistics.median(
            e / b for e, b in zip(engine["decode_runs_tokens_per_s"],
                                  bare["decode_runs_tokens_per_s"])), 3),
        "prefill_gemmakit_over_bare": round(statistics.median(
            b / e for e, b in zip(engine["ttft_runs_s"], bare["ttft_runs_s"])), 3),
        "decode_ratio_of_medians": round(engine["decode_tokens_per_s"]
                                         / bare["decode_tokens_per_s"], 3),
        "prefill_ratio_of_medians": round(engine["prefill_tokens_per_s"]
                                          / bare["prefill_tokens_per_s"], 3),
    }
    if http:
        ratios["http_added_ttft_p50_ms"] = http["added_ttft_p50_ms"]
    report = {
        "model": ref.name, "model_path": str(ref.path),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": {k: cfg[k] for k in ("threads", "context_length", "batch_size",
                                         "prompt_tokens", "gen_tokens", "repeats",
                                         "ttft_requests", "parallel")},
        **res,
        "ratios": ratios,
        "targets": {
            "decode_ratio_ge_0.95": ratios["decode_gemmakit_over_bare"] >= 0.95,
            "prefill_ratio_ge_0.95": ratios["prefill_gemmakit_over_bare"] >= 0.95,
            **({"http_added_ttft_le_5ms": ratios["http_added_ttft_p50_ms"] <= 5.0}
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
        t.add_row("HTTP adds to TTFT, p50 (ms)", "", str(ra["http_added_ttft_p50_ms"]), "")
    Console().print(t)
    Console().print(r["targets"])


def _concurrency_table(r: dict[str, Any]) -> str:
    cols = ("concurrency", "aggregate_tokens_per_s", "raw_batched_tokens_per_s",
            "gemmakit_over_raw", "raw_decode_only_tokens_per_s", "ttft_p50_s", "ttft_p99_s",
            "tpot_p50_s", "tpot_p99_s", "itl_p99_s", "burst_ttft_max_s", "refused")
    rows = ["\t".join(cols)] + ["\t".join(str(lv[c]) for c in cols) for lv in r["levels"]]
    return "\n".join([*rows, json.dumps(r["targets"])])
