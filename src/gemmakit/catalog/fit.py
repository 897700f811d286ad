"""`gemmakit serve --fit`: the context length and number of parallel sequences that fit a memory
budget, planned from the model file itself before anything loads.

The plan keeps `preferred_parallel` sequences (settings' --parallel default) while the context
can reach `target_context` (the engine's default: the trained context, at most 8192), halving the
sequences otherwise; each sequence then gets the longest context (a multiple of 256, at most the
trained one) that fits. Whatever the caller fixed (--context-length, --parallel) stays fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gemmakit.catalog.data import load_catalog
from gemmakit.catalog.local import LocalModel, gguf_local, hf_local
from gemmakit.catalog.memory import MemoryEstimate, estimate_for
from gemmakit.catalog.weights import DTYPE_BYTES, Weights
from gemmakit.errors import ConfigError

STEP = 256  # llama.cpp pads each sequence's cells to 256
DEFAULT_CONTEXT_CAP = 8192  # the llama.cpp engine's default context (trained, at most 8192)


@dataclass(frozen=True)
class FitPlan:
    context_length: int
    parallel: int
    estimate: MemoryEstimate
    budget_bytes: int
    model: str
    engine: str
    reason: str

    @property
    def memory_bytes(self) -> int:
        return self.estimate.total_bytes

    def summary(self) -> str:
        """One line for serve to print before loading."""
        b = self.estimate.breakdown()
        parts = ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in b.items())
        return (f"--fit {_fmt(self.budget_bytes)}: {self.model} on {self.engine} with "
                f"--context-length {self.context_length} --parallel {self.parallel} needs "
                f"{_fmt(self.memory_bytes)} ({parts}); {self.reason}")

    def to_json(self) -> dict:
        return {"model": self.model, "engine": self.engine, "budget_bytes": self.budget_bytes,
                "context_length": self.context_length, "parallel": self.parallel,
                "memory_bytes": self.memory_bytes, "memory": self.estimate.breakdown(),
                "reason": self.reason}


def _fmt(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 1e3:.0f} kB"


def _local(path: Path, fmt: str, engine: str, name: str | None,
           quantization: str | None) -> LocalModel:
    if fmt == "gguf":
        lm = gguf_local(path, name)
        if engine == "transformers":
            return _dequantised(path, lm, quantization)
        return lm
    if engine == "llamacpp":
        raise ConfigError("the llamacpp engine loads GGUF files")
    return hf_local(path, quantization, name=name)


def _dequantised(path: Path, lm: LocalModel, quantization: str | None) -> LocalModel:
    """The transformers engine dequantises a GGUF once into a float32 dense folder and loads that
    (under `quantization`, a profile's label, if given)."""
    from gemmakit.catalog.gguf_file import read_tensors
    from gemmakit.catalog.weights import LINEAR_BITS, split_quantization

    label = quantization or load_catalog().engine("transformers")["dense_gguf_dtype"]
    linear, dtype = split_quantization(label)
    total = 0.0
    for t in read_tensors(path):
        n = 1
        for d in t.shape:
            n *= d
        is_linear = len(t.shape) == 2 and t.name != "token_embd.weight"
        total += n * (LINEAR_BITS[linear] / 8 if linear and is_linear else DTYPE_BYTES[dtype])
    return LocalModel(lm.name, "gguf", lm.architecture,
                      Weights(int(total), int(total), lm.weights.parameters),
                      lm.trained_context, label)


def profile_quantization(profile: str | None, device: str) -> str | None:
    """The weights label a transformers loading profile stands for on `device` (the table in
    gemmakit/hf/profiles.py), without importing torch; None: the checkpoint's own dtype."""
    if profile is None:
        return None
    if device.startswith("cuda"):
        return {"performance": "BF16", "balanced": "INT8/BF16", "edge": "INT8/BF16",
                "max-efficiency": "NF4/BF16"}[profile]
    from gemmakit.hf.profiles import cpu_has_bf16

    half = "BF16" if cpu_has_bf16() else "F32"
    return {"performance": "F32", "balanced": half, "max-efficiency": f"INT8/{half}",
            "edge": f"INT8/{half}"}[profile]


def plan_fit(model_path: str | Path, budget_bytes: int, *, engine: str = "llamacpp",
             model_format: str | None = None, context_length: int | None = None,
             parallel: int | None = None, preferred_parallel: int = 16,
             batch_size: int | None = None, name: str | None = None,
             quantization: str | None = None, device: str = "cpu",
             swa_full: bool | None = None) -> FitPlan:
    """The largest serving configuration of the model at `model_path` that fits `budget_bytes`.

    `context_length` / `parallel`: values the user fixed (None: chosen here). `batch_size`:
    --batch-size (it caps llama.cpp's ubatch, which sizes the attention scratch). `quantization`: the
    transformers engine's weights under a profile (`profile_quantization`). `device`: "cuda"
    sizes GPU memory (the CPU-measured process overhead left out). `swa_full`: llama.cpp's
    sliding-window layers keep the whole context (--swa-full; None: the catalog's). Raises ConfigError,
    with the smallest configuration's needs, when nothing fits."""
    path = Path(model_path)
    fmt = model_format or ("gguf" if path.suffix.lower() == ".gguf" else "hf")
    lm = _local(path, fmt, engine, name, quantization)
    catalog = load_catalog()
    if engine == "llamacpp" and (batch_size is not None or swa_full is not None):
        from dataclasses import replace

        engines = dict(catalog.engines)
        facts = dict(engines["llamacpp"])
        if batch_size is not None:  # the engine's micro-batch is at most --batch-size
            facts["ubatch"] = min(batch_size, int(facts["ubatch"]))
        if swa_full is not None:
            facts["swa_full"] = swa_full
        engines["llamacpp"] = facts
        catalog = replace(catalog, engines=engines)
    trained = lm.trained_context or DEFAULT_CONTEXT_CAP
    max_seqs = 1 if engine == "transformers" else None

    def est(ctx: int, par: int) -> MemoryEstimate:
        return estimate_for(lm.architecture, lm.weights, catalog, engine=engine,
                            quantization=lm.quantization, context=ctx, parallel=par,
                            device=device)

    def longest(par: int) -> int | None:
        """The longest context (multiple of STEP, <= trained) that fits with `par` sequences."""
        lo, hi = 1, trained // STEP
        if est(lo * STEP, par).total_bytes > budget_bytes:
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if est(mid * STEP, par).total_bytes <= budget_bytes:
                lo = mid
            else:
                hi = mid - 1
        return lo * STEP

    def plan(ctx: int, par: int, reason: str) -> FitPlan:
        return FitPlan(ctx, par, est(ctx, par), budget_bytes, lm.name, engine, reason)

    if context_length is not None and context_length > trained:
        raise ConfigError(f"--context-length {context_length} is beyond the model's trained "
                          f"context ({trained})")
    if max_seqs is not None:
        parallel = 1
    if context_length is not None and parallel is not None:
        p = plan(context_length, parallel, "both fixed by the command line")
        if p.memory_bytes > budget_bytes:
            raise ConfigError(f"does not fit: {p.summary()}")
        return p
    if context_length is not None:
        par = parallel_for(est, context_length, budget_bytes, cap=64)
        if par == 0:
            p = plan(context_length, 1, "")
            raise ConfigError(f"--context-length {context_length} does not fit "
                              f"{_fmt(budget_bytes)} even with one sequence: it needs "
                              f"{_fmt(p.memory_bytes)}")
        return plan(context_length, min(par, preferred_parallel) if parallel is None else par,
                    f"the most sequences of {context_length} tokens that fit, at most "
                    f"{preferred_parallel}")
    target = min(trained, DEFAULT_CONTEXT_CAP)
    candidates = [parallel] if parallel is not None else _halvings(preferred_parallel)
    for par in candidates:
        ctx = longest(par)
        if ctx is not None and (ctx >= target or par == candidates[-1]):
            why = (f"{par} sequence{'s' if par > 1 else ''} of the longest context that fits"
                   + ("" if ctx >= target else f" (short of {target}: fewer sequences would "
                      "not help further)" if par == 1 else ""))
            return plan(ctx, par, why)
    smallest = plan(STEP, candidates[-1], "")
    parts = ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}"
                      for k, v in smallest.estimate.breakdown().items())
    raise ConfigError(f"nothing fits {_fmt(budget_bytes)}: {lm.name} on {engine} needs "
                      f"{_fmt(smallest.memory_bytes)} even with {candidates[-1]} sequence(s) of "
                      f"{STEP} tokens ({parts})")


def _halvings(n: int) -> list[int]:
    out = [max(1, n)]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def parallel_for(est, context: int, budget: int, *, cap: int) -> int:
    """The most sequences of `context` tokens that fit (0 if not even one)."""
    best = 0
    for par in range(1, cap + 1):
        if est(context, par).total_bytes > budget:
            break
        best = par
    return best


_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9,
          "GB": 10**9, "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
          "TIB": 2**40}


def parse_bytes(text: str) -> int:
    """'8GB' -> 8e9, '512MiB' -> 512 * 2**20, '1.5G' -> 1.5e9, '4000000' -> 4e6 (decimal units
    as disks and cloud instances count; the *iB units are binary)."""
    s = text.strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise ConfigError(f"not a memory size: '{text}' (for example 8GB, 512MiB)") from None
    if unit not in _UNITS or value <= 0:
        raise ConfigError(f"not a memory size: '{text}' (for example 8GB, 512MiB)")
    return int(value * _UNITS[unit])
