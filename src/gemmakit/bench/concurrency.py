"""`gemmakit bench --concurrency 1,2,4,8,16`: the real HTTP server under concurrent streaming load,
against raw llama-cpp-python batched decoding of the same number of sequences.

Per level c: c clients each stream `--requests-per-stream` completions back to back (128 tokens,
end-of-generation ignored, distinct prompts), starting one after another over the span of one
request (a linear ramp-up), so that requests arrive while others run, as real traffic does.
Reported: aggregate decode tokens/s in the steady state (token events while all c clients were
running / that window; `overall_tokens_per_s` is all tokens / wall time, ramp included), time to
first token p50/p99, time per output token p50/p99 (per request: (last token time - first token
time) / (tokens - 1)), inter-token latency p99 (gaps between consecutive streamed chunks, over all
requests), requests refused (429), and a burst probe: c one-token requests sent in the same instant
(the last of them waits for all c prompts by physics).

The raw reference (`bench/raw.py`) is llama-cpp-python with no server and no scheduler doing the
same work: c streams of back-to-back requests with the same prompts and lengths, out of step as
the clients are, each arriving prompt read in the batch beside the others' next tokens
(`raw_batched_tokens_per_s`). Beside it, the decode-only ceiling: c sequences decoding together
the whole time, no prompt ever arriving (`raw_decode_only_tokens_per_s`); no server whose
requests come and go can reach it, since every request's prompt must be read. Both run in one
process before and after each of `--rounds` rounds of a level; each round is compared with the
mean of the two runs around it, and the level reports the median.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gemmakit.bench.measure import _free_port
from gemmakit.errors import ConfigError

_TOPICS = ["the sea", "mountains", "a city at night", "old trains", "bread", "winter", "bees",
           "a library", "the moon", "rivers", "chess", "gardens", "clocks", "storms", "tea",
           "music"]


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _prompt(k: int, j: int) -> str:
    """Client k's j-th prompt (the raw reference reads the same ones)."""
    return f"A short essay about {_TOPICS[(k + j) % len(_TOPICS)]}: "


def _raw_level(cfg: dict[str, Any], c: int, prompts: list[list[int]]) -> dict[str, float]:
    """Raw llama-cpp-python at c streams: tokens/s on the clients' workload ("continuous", over
    the steps in which the HTTP clients' steady state lies: all but the first request of each
    stream) and the decode-only ceiling (c sequences decoding from start to end)."""
    from gemmakit.bench.raw import RawBatch

    gen = cfg["gen_tokens"]
    raw = RawBatch(cfg["path"], n_seq=c, context_length=cfg["context_length"],
                   threads=cfg["threads"])
    try:
        raw.greedy(prompts[:c], 4)  # warm-up
        _, steps = raw.greedy(prompts[:c], gen)
        continuous = raw.continuous(prompts, c, gen,
                                    max(1, cfg["requests_per_stream"] - 1) * gen)
    finally:
        raw.close()
    decode = steps[1:]  # step 0 holds the prefill
    return {"continuous": continuous, "decode_only": c * len(decode) / sum(decode)}


def _in_process(fn, *args):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


async def _http_level(base: str, c: int, cfg: dict[str, Any], stagger: float, *,
                      model: str = "bench", prompt: Callable[[int, int], str] = _prompt,
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
    """c closed-loop clients; client k starts k * `stagger` seconds after the first, so the
    streams run out of step as real users do (a linear ramp-up, as vLLM's serving benchmark
    offers) instead of every request arriving in the same instant. Client k's j-th request
    streams `prompt(k, j)`. The clients are aiohttp's (C HTTP parser): they share the machine
    with the server, and httpx took twice the CPU per streamed event (2.1 % of a core at 8
    streams, against 1.2 %; 0.8 % on uvloop). `usage` holds each answered request's usage
    ({} when the server sent none), in the order of `ttft`; `error_detail` the first refusal or
    error the server answered."""
    import aiohttp

    ttft: list[float] = []
    tpot: list[float] = []
    itl: list[float] = []
    usage: list[dict[str, Any]] = []
    events: list[float] = []  # arrival time of every streamed token event
    first_start: list[float] = []
    last_end: list[float] = []
    tokens = refused = errors = 0
    error_detail: list[str] = []

    async def client(k: int, http: aiohttp.ClientSession) -> None:
        nonlocal tokens, refused, errors
        await asyncio.sleep(k * stagger)
        first_start.append(time.perf_counter())
        for j in range(cfg["requests_per_stream"]):
            body = {"model": model, "max_tokens": cfg["gen_tokens"], "temperature": 0,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
                    "prompt": prompt(k, j)}
            t0 = time.perf_counter()
            times: list[float] = []
            n = 0
            got: dict[str, Any] = {}
            async with http.post(f"{base}/v1/completions", json=body) as r:
                if r.status != 200:
                    if r.status == 429:
                        refused += 1
                    else:
                        errors += 1
                    text = (await r.read()).decode(errors="replace")
                    error_detail.append(f"HTTP {r.status}: {text[:300]}")
                    continue
                # Only a timestamp per event while streaming (the client shares the machine
                # with the server, so it stays light); the last event, the usage, is parsed.
                last = b""
                async for line in r.content:
                    if line.startswith(b"data: {"):
                        times.append(time.perf_counter())
                        last = line
                if last:
                    ev = json.loads(last[6:])
                    if ev.get("usage") and not ev["choices"]:
                        got = ev["usage"]
                        n = got["completion_tokens"]
                        times.pop()  # the usage event carries no token
            if not times:
                errors += 1
                error_detail.append("a reply without a single streamed event")
                continue
            tokens += n
            usage.append(got)
            events.extend(times)
            ttft.append(times[0] - t0)
            if n > 1:
                tpot.append((times[-1] - times[0]) / (n - 1))
            itl.extend(b - a for a, b in zip(times, times[1:]))
        last_end.append(time.perf_counter())

    async with _session(c, headers) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(c)))
        wall = time.perf_counter() - t0
    # Steady state: from the moment the last client started to the moment the first one ended,
    # all c streams were running.
    lo, hi = max(first_start), min(last_end)
    steady = sum(1 for t in events if lo <= t <= hi) / (hi - lo) if hi > lo + 1 else None
    return {"refused": refused, "errors": errors, "tokens": tokens, "wall": wall,
            "steady": steady if steady is not None else tokens / wall,
            "ttft": ttft, "tpot": tpot, "itl": itl, "usage": usage,
            "error_detail": error_detail[0] if error_detail else None}


def _level(c: int, cfg: dict[str, Any], stagger: float, runs: list[dict[str, Any]],
           raw_runs: list[dict[str, float]]) -> dict[str, Any]:
    """One level's figures from its rounds: run i is compared with the mean of the raw
    reference just before and just after it; throughput and ratio are medians over the rounds,
    latency percentiles are over every request of every round."""
    raws = [r["continuous"] for r in raw_runs]
    ceiling = [r["decode_only"] for r in raw_runs]
    ratios = [run["steady"] / ((raws[i] + raws[i + 1]) / 2) for i, run in enumerate(runs)]
    ceiling_ratios = [run["steady"] / ((ceiling[i] + ceiling[i + 1]) / 2)
                      for i, run in enumerate(runs)]
    ttft = [x for run in runs for x in run["ttft"]]
    tpot = [x for run in runs for x in run["tpot"]]
    itl = [x for run in runs for x in run["itl"]]
    return {
        "concurrency": c, "rounds": len(runs),
        "requests": c * cfg["requests_per_stream"] * len(runs),
        "refused": sum(run["refused"] for run in runs),
        "errors": sum(run["errors"] for run in runs),
        "completion_tokens": sum(run["tokens"] for run in runs),
        "wall_s": round(sum(run["wall"] for run in runs), 3),
        "stagger_s": round(stagger, 3),
        "aggregate_tokens_per_s": round(statistics.median(run["steady"] for run in runs), 2),
        "aggregate_rounds_tokens_per_s": [round(run["steady"], 2) for run in runs],
        "overall_tokens_per_s": round(statistics.median(run["tokens"] / run["wall"]
                                                        for run in runs), 2),
        "ttft_p50_s": _r(_pct(ttft, 0.5)), "ttft_p99_s": _r(_pct(ttft, 0.99)),
        "tpot_p50_s": _r(_pct(tpot, 0.5)), "tpot_p99_s": _r(_pct(tpot, 0.99)),
        "itl_p99_s": _r(_pct(itl, 0.99)),
        "raw_batched_tokens_per_s": round(statistics.median(raws), 2),
        "raw_batched_runs_tokens_per_s": [round(x, 2) for x in raws],
        "gemmakit_over_raw": round(statistics.median(ratios), 3),
        "gemmakit_over_raw_rounds": [round(x, 3) for x in ratios],
        "raw_decode_only_tokens_per_s": round(statistics.median(ceiling), 2),
        "raw_decode_only_runs_tokens_per_s": [round(x, 2) for x in ceiling],
        "gemmakit_over_raw_decode_only": round(statistics.median(ceiling_ratios), 3),
    }


async def _burst(base: str, c: int) -> dict[str, Any]:
    """c requests sent in the same instant (one token each): their time to first token. The last
    of them necessarily waits for all c prompts to be read, so this grows with c by physics."""
    async def one(k: int, http) -> float:
        t0 = time.perf_counter()
        async with http.post(f"{base}/v1/completions", json={
                "model": "bench", "max_tokens": 1, "temperature": 0,
                "prompt": _prompt(k, 0)}) as r:
            r.raise_for_status()
            await r.read()
        return time.perf_counter() - t0

    async with _session(c) as http:
        lat = await asyncio.gather(*(one(k, http) for k in range(c)))
    return {"burst_ttft_p50_s": _r(_pct(lat, 0.5)), "burst_ttft_max_s": _r(max(lat))}


def _arun(coro):
    """Run the clients on uvloop where it is installed (the server extra): with aiohttp, 0.8 %
    of a core at 8 streams against 1.2 % on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _session(c: int, headers: dict[str, str] | None = None):
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c + 4), headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=600))


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _serve_command(cfg: dict[str, Any], port: int, *extra: str,
                   python: str = sys.executable) -> list[str]:
    """`gemmakit serve` on the bench's model (served as "bench") on 127.0.0.1:`port`; run it with
    GEMMAKIT_HOME=cfg["home"]."""
    return [python, "-m", "gemmakit", "serve", "--model", cfg["path"],
            "--served-model-name", "bench", "--port", str(port),
            "--context-length", str(cfg["context_length"]), "--threads", str(cfg["threads"]),
            "--log-level", "warning", *extra]


def _wait_healthy(proc, base: str, timeout: float = 120) -> bool:
    """Poll GET /health until it answers 200 (True), the process exits or `timeout` passes."""
    import httpx

    # Twice a second: at 10 Hz the polls (a new client each) took a third of a core while vLLM,
    # starting beside it, needed every cycle.
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            return False
        time.sleep(0.5)


def _start_server(cfg: dict[str, Any], *extra: str):
    import subprocess

    port = _free_port()
    proc = subprocess.Popen(_serve_command(cfg, port, *extra),
                            env={**os.environ, "GEMMAKIT_HOME": cfg["home"]},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    if not _wait_healthy(proc, base):
        proc.kill()
        raise RuntimeError("the gemmakit server did not become healthy")
    return proc, base


def _refusal_latency(cfg: dict[str, Any], n: int = 20) -> dict[str, Any]:
    """A server with one slot and no queue, busy with one stream: how fast are others refused?"""
    import httpx

    proc, base = _start_server(cfg, "--parallel", "1", "--max-queue", "0")
    try:
        body = {"model": "bench", "prompt": "Once upon a time",
                "max_tokens": cfg["context_length"] - 16,
                "ignore_eos": True, "stream": True}
        lat: list[float] = []
        statuses: list[int] = []
        with httpx.Client(timeout=60) as c, c.stream("POST", f"{base}/v1/completions",
                                                     json=body) as busy:
            lines = busy.iter_lines()
            next(line for line in lines if line.startswith("data: {"))  # it is generating
            for _ in range(n):
                t0 = time.perf_counter()
                r = c.post(f"{base}/v1/completions",
                           json={"model": "bench", "prompt": "Hi", "max_tokens": 2})
                lat.append(time.perf_counter() - t0)
                statuses.append(r.status_code)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"refusals": statuses.count(429), "requests": n,
            "latency_p50_ms": round((_pct(lat, 0.5) or 0.0) * 1000, 2),
            "latency_max_ms": round(max(lat) * 1000, 2)}


def run_concurrency(ns, cfg: dict[str, Any], model_name: str) -> dict[str, Any]:
    import httpx

    if importlib.util.find_spec("aiohttp") is None:  # the clients
        raise ConfigError("gemmakit bench --concurrency needs the bench extra: "
                          "pip install 'gemmakit[bench]'")

    levels = [int(x) for x in ns.concurrency.split(",") if x.strip()]
    parallel = ns.parallel or max(levels)
    cfg = {**cfg, "requests_per_stream": ns.requests_per_stream}
    log = (lambda *a: None) if ns.json else (lambda *a: print(*a, file=sys.stderr))

    extra = ["--parallel", str(parallel)]
    if ns.max_queue is not None:
        extra += ["--max-queue", str(ns.max_queue)]
    proc, base = _start_server(cfg, *extra)
    results = []
    try:
        httpx.post(f"{base}/v1/completions", json={"model": "bench", "prompt": "x",
                                                   "max_tokens": 1}, timeout=60).raise_for_status()
        prompts = _prompt_ids(cfg)
        for c in levels:
            # Rounds alternate with the raw reference (raw, gemmakit, raw, gemmakit, …, raw),
            # each in its own process with nothing else running, so that the drift of the
            # machine hits both sides alike.
            raws = [_in_process(_raw_level, cfg, c, prompts)]
            # Ramp-up: one request's expected duration (from the raw per-stream rate) spread
            # evenly over the c clients.
            stagger = cfg["gen_tokens"] / raws[0]["continuous"] if c > 1 else 0.0
            runs = []
            for i in range(ns.rounds):
                log(f"bench: concurrency {c}: round {i + 1}/{ns.rounds} …")
                time.sleep(0.3)
                runs.append(_arun(_http_level(base, c, cfg, stagger)))
                time.sleep(0.3)
                raws.append(_in_process(_raw_level, cfg, c, prompts))
            level = _level(c, cfg, stagger, runs, raws)
            level.update(_arun(_burst(base, c)))
            results.append(level)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    by = {r["concurrency"]: r for r in results}
    summary: dict[str, Any] = {"model": model_name, "parallel": parallel,
                               "settings": {**{k: cfg[k] for k in ("threads", "context_length",
                                                                   "gen_tokens",
                                                                   "requests_per_stream")},
                                            "rounds": ns.rounds},
                               "levels": results}
    targets = {}
    if 8 in by:
        targets["agg_8_over_raw_8_ge_0.9"] = by[8]["gemmakit_over_raw"] >= 0.9
        if 1 in by:
            r = by[8]["aggregate_tokens_per_s"] / by[1]["aggregate_tokens_per_s"]
            summary["agg_8_over_agg_1"] = round(r, 3)
            targets["agg_8_over_agg_1_ge_1.8"] = r >= 1.8
            ratio = by[8]["ttft_p99_s"] / by[1]["ttft_p50_s"]
            summary["ttft_p99_8_over_ttft_p50_1"] = round(ratio, 3)
            targets["ttft_p99_8_le_4x_ttft_p50_1"] = ratio <= 4.0
    log("bench: refusal latency when full …")
    summary["admission"] = _refusal_latency(cfg)
    targets["refusals_le_100ms"] = summary["admission"]["latency_max_ms"] <= 100
    summary["targets"] = targets
    if ns.plot:
        _plot(results, Path(ns.plot))
        summary["plot"] = str(ns.plot)
    return summary


def _prompt_ids(cfg: dict[str, Any]) -> list[list[int]]:
    """The clients' prompts as the server reads them (BOS, then the text), for the raw
    reference: prompt i is `_prompt(i, 0)`."""
    from gemmakit.engines.llamacpp import _lib

    ll = _lib()
    params = ll.llama_model_default_params()
    params.vocab_only = True
    model = ll.llama_model_load_from_file(cfg["path"].encode(), params)
    try:
        vocab = ll.llama_model_get_vocab(model)
        out = []
        for i in range(len(_TOPICS)):
            text = _prompt(i, 0).encode()
            buf = (ll.llama_token * 256)()
            n = ll.llama_tokenize(vocab, text, len(text), buf, 256, False, False)
            out.append([2, *buf[:n]])
        return out
    finally:
        ll.llama_model_free(model)


def _plot(levels: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [lv["concurrency"] for lv in levels]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    a1.plot(cs, [lv["aggregate_tokens_per_s"] for lv in levels], "o-", label="gemmakit (HTTP)")
    a1.plot(cs, [lv["raw_batched_tokens_per_s"] for lv in levels], "s--",
            label="raw llama.cpp, same workload")
    a1.plot(cs, [lv["raw_decode_only_tokens_per_s"] for lv in levels], "^:",
            label="raw llama.cpp, decode only")
    a1.set_xlabel("concurrent streams")
    a1.set_ylabel("aggregate decode tokens/s")
    a1.set_xscale("log", base=2)
    a1.set_xticks(cs, [str(c) for c in cs])
    a1.legend()
    a1.grid(alpha=0.3)
    for key, label in (("ttft_p50_s", "TTFT p50"), ("ttft_p99_s", "TTFT p99"),
                       ("tpot_p50_s", "TPOT p50"), ("itl_p99_s", "ITL p99")):
        a2.plot(cs, [(lv[key] or 0) * 1000 for lv in levels], "o-", label=label)
    a2.set_xlabel("concurrent streams")
    a2.set_ylabel("milliseconds")
    a2.set_xscale("log", base=2)
    a2.set_yscale("log")
    a2.set_xticks(cs, [str(c) for c in cs])
    a2.legend()
    a2.grid(alpha=0.3)
    fig.suptitle("gemmakit continuous batching (Gemma 3 270M Q4_K_M, "
                 f"{os.cpu_count()} CPU cores)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

