"""Measurements against the real bundled model, each in a fresh process:

- `rss`: peak resident memory of an engine serving `parallel` prompts that fill `context`
  (the estimate's worst case), with the estimate beside it;
- `overhead`: the runtime overhead of an engine (what the estimate does not compute: the
  interpreter, libraries, tokenizer, per-sequence buffers), measured once and written to
  data/measured.json with the command that measured it;
- `decode`: single-sequence decode tokens/s, beside the bandwidth estimate. Timing needs a
  quiet machine; nothing runs it implicitly.

    python -m gemmakit.catalog.measure rss --engine llamacpp --context 4096 --parallel 2
    python -m gemmakit.catalog.measure overhead --engine llamacpp --write
    python -m gemmakit.catalog.measure decode --engine llamacpp --tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gemmakit.errors import ConfigError

BUNDLED_ID = "gemma-3-270m"
MEASURED_FILE = Path(__file__).parent / "data" / "measured.json"
# The prompt each measurement repeats (its tokenization, cut to length).
_TEXT = ("The history of the city begins with a small settlement on the river, where traders "
         "met each spring to exchange salt, wool and news from the coast. ")


def _home(home: Path | None) -> Path:
    if home is not None:
        return home
    from gemmakit.settings import default_home

    return default_home()


def _rss_now() -> int:
    import resource

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that over fork
    and exec, so a child started by a large parent (pytest after parsing a GGUF) would report
    the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise ConfigError("no VmHWM in /proc/self/status: peak RSS is measured on Linux only")


def _prompt(eng, n: int, salt: int) -> list[int]:
    """`n` prompt tokens (BOS first); `salt` makes each sequence's prompt differ from the first
    token on, so no prefix is shared between them."""
    unit = eng.tokenize(f"{salt}. " + _TEXT)
    ids = [2]
    while len(ids) < n:
        ids += unit
    return ids[:n]


def _run_child(args: list[str], timeout: float) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "gemmakit.catalog.measure", "_child", *args],
                         capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"measurement failed: {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(ns: argparse.Namespace) -> dict[str, Any]:
    """In the measuring process: load the engine, run the workload, report."""
    import asyncio

    from gemmakit.catalog import resolve
    from gemmakit.types import GenerationRequest, SamplingParams

    home = Path(ns.home)
    ref = resolve(str(ns.model) if ns.model else BUNDLED_ID, home / "models", progress=False)
    if ns.engine == "transformers":
        from gemmakit.hf.checkpoint import dense_from_gguf

        path = dense_from_gguf(ref.path, home)  # converted already by the parent
    start = _rss_now()
    t0 = time.perf_counter()
    if ns.engine == "llamacpp":
        from gemmakit.engines.llamacpp import LlamaCppEngine

        eng: Any = LlamaCppEngine(ref.path, context_length=ns.context, parallel=ns.parallel,
                                  threads=ns.threads)
    else:
        from gemmakit.engines.transformers import TransformersEngine

        eng = TransformersEngine(path, context_length=ns.context, threads=ns.threads)
    load_s = time.perf_counter() - t0
    loaded = _rss_now()
    n_prompt = ns.prompt_tokens or max(1, ns.context - ns.max_tokens - 1)
    sequences = ns.parallel if ns.engine == "llamacpp" else 1

    async def run() -> list[float | None]:
        async def one(i: int) -> float | None:
            req = GenerationRequest(
                prompt_tokens=_prompt(eng, n_prompt, i),
                sampling=SamplingParams(temperature=0, max_tokens=ns.max_tokens,
                                        ignore_eos=True), request_id=f"measure-{i}")
            stats = None
            async for c in eng.stream(req):
                stats = c.stats or stats
            return stats.decode_tokens_per_s if stats else None

        try:
            return list(await asyncio.gather(*(one(i) for i in range(sequences))))
        finally:
            await eng.aclose()

    tps = asyncio.run(run())
    return {"engine": ns.engine, "context": ns.context, "parallel": sequences,
            "prompt_tokens": n_prompt, "max_tokens": ns.max_tokens, "threads": ns.threads,
            "start_rss_bytes": start, "loaded_rss_bytes": loaded, "peak_rss_bytes": peak_rss_bytes(),
            "load_s": round(load_s, 2), "decode_tokens_per_s": tps}


def _prepare(engine: str, home: Path) -> None:
    """Assemble the bundled model (and its dense folder) outside the measured process."""
    from gemmakit.catalog import resolve

    ref = resolve(BUNDLED_ID, home / "models", progress=False)
    if engine == "transformers":
        from gemmakit.hf.checkpoint import dense_from_gguf

        dense_from_gguf(ref.path, home)


def bundled_estimate(engine: str, context: int, parallel: int, *, with_overhead: bool = True):
    """The catalog's estimate for the bundled GGUF on `engine` (the transformers engine holds it
    dequantised to float32)."""
    from dataclasses import replace

    from gemmakit.catalog.data import load_catalog
    from gemmakit.catalog.memory import estimate

    cat = load_catalog()
    if not with_overhead:
        cat = replace(cat, measured={})
    model = cat.get(BUNDLED_ID)
    quant = "Q4_K_M" if engine == "llamacpp" else cat.engine("transformers")["dense_gguf_dtype"]
    return estimate(model, cat, engine=engine, quantization=quant, context=context,
                    parallel=parallel)


def local_estimate(path: Path, context: int, parallel: int):
    """The estimate for a GGUF file on the llama.cpp engine, from its own tensor table."""
    from gemmakit.catalog.data import load_catalog
    from gemmakit.catalog.local import gguf_local
    from gemmakit.catalog.memory import estimate_for

    lm = gguf_local(path)
    return estimate_for(lm.architecture, lm.weights, load_catalog(), engine="llamacpp",
                        quantization=lm.quantization, context=context, parallel=parallel)


def measure_rss(engine: str, context: int, parallel: int = 1, *, prompt_tokens: int | None = None,
                max_tokens: int = 8, threads: int | None = None, home: Path | None = None,
                model: Path | None = None, timeout: float = 900) -> dict[str, Any]:
    """Peak RSS of `engine` on the bundled model (or, on llama.cpp, the GGUF `model`), with the
    estimate and the relative error."""
    home = _home(home)
    _prepare(engine, home)
    threads = threads or os.cpu_count() or 1
    args = ["--engine", engine, "--context", str(context), "--parallel", str(parallel),
            "--max-tokens", str(max_tokens), "--threads", str(threads), "--home", str(home)]
    if prompt_tokens:
        args += ["--prompt-tokens", str(prompt_tokens)]
    if model is not None:
        if engine != "llamacpp":
            raise ConfigError("measuring another model file is for the llamacpp engine")
        args += ["--model", str(model)]
    got = _run_child(args, timeout)
    est = (local_estimate(Path(model), context, parallel) if model is not None
           else bundled_estimate(engine, context, parallel))
    got["estimate_bytes"] = est.total_bytes
    got["estimate"] = est.breakdown()
    got["error"] = round(est.total_bytes / got["peak_rss_bytes"] - 1, 4)
    return got


# The configurations the overhead is measured at: one and several sequences, a short context
# (so the computed parts are small beside what is measured).
OVERHEAD_RUNS = {"llamacpp": [(1024, 1), (1024, 4)], "transformers": [(512, 1), (2048, 1)]}


def measure_overhead(engine: str, *, home: Path | None = None,
                     threads: int | None = None) -> dict[str, Any]:
    """Fit the engine's overhead: peak RSS minus the computed weights, KV cache and scratch.
    llama.cpp: a fixed part and a part per sequence (two runs at 1 and 4 sequences). The
    transformers engine: a fixed part and its prefill activations per prompt token (two prompt
    lengths, one sequence)."""
    from gemmakit.catalog.data import load_catalog

    runs = [measure_rss(engine, c, p, threads=threads, home=home)
            for c, p in OVERHEAD_RUNS[engine]]
    computed = []
    for r in runs:
        e = bundled_estimate(engine, r["context"], r["parallel"], with_overhead=False)
        computed.append(e.weights_bytes + e.kv_cache_bytes + e.scratch_bytes)
    rest = [r["peak_rss_bytes"] - c for r, c in zip(runs, computed, strict=True)]
    out: dict[str, Any] = {}
    if engine == "llamacpp":
        (_, p1), (_, p2) = OVERHEAD_RUNS[engine]
        per_seq = max(0.0, (rest[1] - rest[0]) / (p2 - p1))
        out["per_sequence_bytes"] = int(per_seq)
        out["fixed_bytes"] = int(rest[0] - per_seq * p1)
    else:
        arch = load_catalog().get(BUNDLED_ID).architecture
        assert arch is not None
        width = arch.hidden_size + arch.intermediate_size
        (c1, _), (c2, _) = OVERHEAD_RUNS[engine]
        per_token = max(0.0, (rest[1] - rest[0]) / (c2 - c1))
        out["prefill_bytes_per_token_per_width"] = round(per_token / width, 3)
        out["fixed_bytes"] = int(rest[0] - per_token * c1)
        out["per_sequence_bytes"] = 0
    out["runs"] = [{k: r[k] for k in ("context", "parallel", "prompt_tokens", "peak_rss_bytes")}
                   for r in runs]
    out["command"] = f"python -m gemmakit.catalog.measure overhead --engine {engine} --write"
    out["measured_on"] = _describe_machine(engine)
    out["measured_at"] = time.strftime("%Y-%m-%d")
    return out


def _describe_machine(engine: str) -> str:
    from gemmakit.catalog.speed import _machine

    versions = []
    try:
        if engine == "llamacpp":
            import llama_cpp

            versions.append(f"llama-cpp-python {llama_cpp.__version__}")
        else:
            import torch
            import transformers

            versions.append(f"torch {torch.__version__}, transformers {transformers.__version__}")
    except ImportError:  # pragma: no cover
        pass
    return "; ".join([_machine(), f"Python {sys.version.split()[0]}", *versions])


def write_measured(engine: str, figures: dict[str, Any], path: Path = MEASURED_FILE) -> None:
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc.setdefault("about", "Runtime overhead per engine, measured on the bundled Gemma 3 270M "
                            "by the command recorded with it; see docs/models.md.")
    doc.setdefault("engines", {})[engine] = figures
    path.write_text(json.dumps(doc, indent=2) + "\n")


def measure_decode(engine: str = "llamacpp", *, tokens: int = 128, prompt_tokens: int = 16,
                   threads: int | None = None, home: Path | None = None) -> dict[str, Any]:
    """Measured single-sequence decode tokens/s on the bundled model beside the estimate from
    this machine's bandwidth (probed here, just before). Needs a quiet machine."""
    from gemmakit.catalog.data import load_catalog
    from gemmakit.catalog.memory import kv_element_bytes
    from gemmakit.catalog.speed import (
        decode_tokens_per_second,
        kv_read_bytes_per_token,
        probe_bandwidth,
    )

    home = _home(home)
    _prepare(engine, home)
    threads = threads or os.cpu_count() or 1
    bw = probe_bandwidth(threads=threads)
    got = _run_child(["--engine", engine, "--context", str(prompt_tokens + tokens + 64),
                      "--parallel", "1", "--prompt-tokens", str(prompt_tokens),
                      "--max-tokens", str(tokens), "--threads", str(threads),
                      "--home", str(home)], timeout=900)
    cat = load_catalog()
    est = bundled_estimate(engine, prompt_tokens + tokens, 1)
    arch = cat.get(BUNDLED_ID).architecture
    assert arch is not None
    kv = kv_read_bytes_per_token(arch, prompt_tokens + tokens // 2,
                                 element_bytes=kv_element_bytes(engine, cat, est.quantization),
                                 window_capped=engine != "llamacpp")
    estimate_tps = decode_tokens_per_second(est.weights.read_per_token_bytes, kv,
                                            bw.bytes_per_second)
    measured = got["decode_tokens_per_s"][0]
    return {"engine": engine, "threads": threads, "tokens": tokens,
            "bandwidth_bytes_per_s": bw.bytes_per_second,
            "bytes_per_token": est.weights.read_per_token_bytes + kv,
            "estimate_tokens_per_s": round(estimate_tps, 2),
            "measured_tokens_per_s": round(measured, 2) if measured else None,
            "measured_over_estimate": round(measured / estimate_tps, 3) if measured else None,
            "machine": bw.machine}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gemmakit.catalog.measure")
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("rss", "overhead", "decode", "_child"):
        s = sub.add_parser(name)
        s.add_argument("--engine", choices=("llamacpp", "transformers"), default="llamacpp")
        s.add_argument("--threads", type=int)
        s.add_argument("--home", type=Path)
        if name in ("rss", "_child"):
            s.add_argument("--context", type=int, default=2048)
            s.add_argument("--parallel", type=int, default=1)
            s.add_argument("--prompt-tokens", type=int)
            s.add_argument("--max-tokens", type=int, default=8)
            s.add_argument("--model", type=Path, help="a GGUF file instead of the bundled model "
                           "(llamacpp)")
        if name == "overhead":
            s.add_argument("--write", action="store_true",
                           help="store the figures in gemmakit/catalog/data/measured.json")
        if name == "decode":
            s.add_argument("--tokens", type=int, default=128)
    ns = p.parse_args(argv)
    if ns.what == "_child":
        result = _child(ns)
    elif ns.what == "rss":
        result = measure_rss(ns.engine, ns.context, ns.parallel, prompt_tokens=ns.prompt_tokens,
                             max_tokens=ns.max_tokens, threads=ns.threads, home=ns.home,
                             model=ns.model)
    elif ns.what == "overhead":
        result = measure_overhead(ns.engine, home=ns.home, threads=ns.threads)
        if ns.write:
            write_measured(ns.engine, result)
    else:
        result = measure_decode(ns.engine, tokens=ns.tokens, threads=ns.threads, home=ns.home)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
