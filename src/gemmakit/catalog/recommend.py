"""`gemmakit recommend`: catalog variants ranked for a task, a memory budget and a device.

A variant is a model served by one engine at one quantization:
- on CPU, text tasks run on llama.cpp, at Q4_K_M, Q8_0 and, where Google published one, its QAT
  Q4_0 GGUF; image and audio tasks need the transformers engine (the llama.cpp engine is text
  only), at the checkpoint's BF16 or with int8 matrices (profile max-efficiency);
- on CUDA, the transformers engine at BF16, INT8/BF16 and NF4/BF16 (the profiles).

Among the variants that fit, larger models rank first (more parameters, better answers), then
finer quantization, then speed; a variant below `min_tokens_per_second` on this machine ranks
after every faster one. The edge task ranks the fastest first. Each row says why it is where it
is; when nothing fits, `NothingFits` says what the smallest candidate would need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gemmakit.catalog.data import Catalog, Checkpoint, Model
from gemmakit.catalog.memory import MemoryEstimate, estimate, kv_element_bytes
from gemmakit.catalog.speed import decode_tokens_per_second, kv_read_bytes_per_token
from gemmakit.errors import ConfigError

Task = Literal["chat", "vision", "audio", "tools", "edge"]
TASKS: tuple[str, ...] = ("chat", "vision", "audio", "tools", "edge")
DEVICES: tuple[str, ...] = ("cpu", "cuda")

# Finer first: the order quantizations rank in when models are equal.
QUANT_ORDER = ("F32", "BF16", "Q8_0", "INT8/BF16", "INT8/F32", "QAT_Q4_0", "Q4_K_M",
               "NF4/BF16")
_TASK_MODALITY = {"chat": "text", "tools": "text", "edge": "text", "vision": "image",
                  "audio": "audio"}
_TASK_PURPOSES = {"tools": ("general", "function-calling")}


@dataclass(frozen=True)
class Variant:
    model: Model
    engine: str
    quantization: str
    checkpoint: Checkpoint | None


@dataclass(frozen=True)
class Ranked:
    variant: Variant
    memory: MemoryEstimate
    tokens_per_second: float | None
    tokens_per_second_full: float | None
    reason: str

    def to_json(self) -> dict:
        v = self.variant
        return {
            "id": v.model.id, "name": v.model.name, "engine": v.engine,
            "quantization": v.quantization,
            "checkpoint": v.checkpoint.repo if v.checkpoint else None,
            "checkpoint_url": v.checkpoint.url if v.checkpoint else None,
            "memory_bytes": self.memory.total_bytes, "memory": self.memory.breakdown(),
            "context": self.memory.context, "parallel": self.memory.parallel,
            "tokens_per_second_estimate": _round(self.tokens_per_second),
            "tokens_per_second_at_full_context": _round(self.tokens_per_second_full),
            "parameters": self.memory.weights.parameters,
            "modalities": list(v.model.modalities), "license": v.model.license,
            "reason": self.reason, "source": v.model.source,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


class NothingFits(ConfigError):
    """No variant fits; the message says why (the smallest candidate's needs)."""


def _checkpoint(model: Model, fmt: str, quantization: str | None = None) -> Checkpoint | None:
    for c in model.checkpoints:
        if c.tuning == "instruction" and c.format == fmt and (
                quantization is None or c.quantization == quantization):
            return c
    return None


def variants(catalog: Catalog, task: str, device: str) -> tuple[list[Variant], list[str]]:
    """Every variant that can serve `task` on `device`, and why the others cannot."""
    modality = _TASK_MODALITY[task]
    purposes = _TASK_PURPOSES.get(task, ("general",))
    out: list[Variant] = []
    skipped: list[str] = []
    for m in catalog.models:
        if m.purpose not in purposes or modality not in m.modalities:
            continue
        if "instruction" not in m.tunings:
            skipped.append(f"{m.id}: no instruction-tuned weights")
            continue
        if m.architecture is None:
            skipped.append(f"{m.id}: no architecture in the catalog")
            continue
        hf = _checkpoint(m, "safetensors")
        if device == "cuda":
            quants = ["BF16"] if m.raw_parameters else ["BF16", "INT8/BF16", "NF4/BF16"]
            out += [Variant(m, "transformers", q, hf) for q in quants]
        elif modality == "text":
            if m.raw_parameters is not None:
                skipped.append(f"{m.id}: its GGUF tensors are not in the catalog, so llama.cpp "
                               "memory cannot be computed")
                continue
            for q in ("Q8_0", "Q4_K_M"):
                out.append(Variant(m, "llamacpp", q, _checkpoint(m, "gguf", q) or hf))
            qat = _checkpoint(m, "gguf", "QAT_Q4_0")
            if qat is not None:
                out.append(Variant(m, "llamacpp", "QAT_Q4_0", qat))
        else:
            quants = ["BF16"] if m.raw_parameters else ["BF16", "INT8/BF16"]
            out += [Variant(m, "transformers", q, hf) for q in quants]
    return out, skipped


def _speed(v: Variant, mem: MemoryEstimate, catalog: Catalog, bandwidth: float | None,
           position: int) -> float | None:
    if bandwidth is None or v.model.architecture is None:
        return None
    arch = v.model.architecture
    kv = kv_read_bytes_per_token(
        arch, position, element_bytes=kv_element_bytes(v.engine, catalog, v.quantization),
        window_capped=not (v.engine == "llamacpp" and catalog.engine("llamacpp")["swa_full"]))
    return decode_tokens_per_second(mem.weights.read_per_token_bytes, kv, bandwidth)


def _params(v: Variant, mem: MemoryEstimate) -> int:
    return v.model.effective_parameters or mem.weights.parameters


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def _where(v: Variant) -> str:
    c = v.checkpoint
    if c is None:
        return "no published checkpoint in the catalog"
    if v.engine == "llamacpp" and c.format != "gguf":
        return f"quantize {c.repo} to {v.quantization} with llama.cpp"
    return f"from {c.repo}"


def recommend(catalog: Catalog, *, task: str, memory_bytes: int, device: str = "cpu",
              context: int = 4096, parallel: int = 1, bandwidth: float | None = None,
              min_tokens_per_second: float = 5.0) -> list[Ranked]:
    """Ranked variants for `task` that fit `memory_bytes`; NothingFits (with why) if none."""
    if task not in TASKS:
        raise ConfigError(f"unknown task '{task}' (choose from {', '.join(TASKS)})")
    if device not in DEVICES:
        raise ConfigError(f"unknown device '{device}' (choose from {', '.join(DEVICES)})")
    cands, skipped = variants(catalog, task, device)
    if not cands:
        why = "; ".join(skipped) or f"no model in the catalog takes {_TASK_MODALITY[task]} input"
        raise NothingFits(f"no catalog model can serve {task} on {device}: {why}")
    fitting: list[tuple[Variant, MemoryEstimate]] = []
    too_big: list[tuple[Variant, MemoryEstimate]] = []
    short: list[str] = []
    for v in cands:
        if v.model.context_length is not None and context > v.model.context_length:
            short.append(f"{v.model.id} ({v.model.context_length} tokens)")
            continue
        mem = estimate(v.model, catalog, engine=v.engine, quantization=v.quantization,
                       context=context, parallel=parallel, device=device)
        (fitting if mem.total_bytes <= memory_bytes else too_big).append((v, mem))
    if not fitting:
        raise NothingFits(_nothing_fits(task, device, memory_bytes, context, too_big, short))
    rows = []
    for v, mem in fitting:
        tps = _speed(v, mem, catalog, bandwidth, min(context, 256))
        tps_full = _speed(v, mem, catalog, bandwidth, context)
        rows.append((v, mem, tps, tps_full))

    def quant_rank(q: str) -> int:
        return QUANT_ORDER.index(q) if q in QUANT_ORDER else len(QUANT_ORDER)

    def key(row):
        v, mem, tps, _ = row
        slow = tps is not None and tps < min_tokens_per_second
        if task == "edge":
            return (-(tps or 0.0), mem.total_bytes, quant_rank(v.quantization))
        return (slow, -_params(v, mem), quant_rank(v.quantization), -(tps or 0.0))

    rows.sort(key=key)
    out = []
    for i, (v, mem, tps, tps_full) in enumerate(rows):
        out.append(Ranked(v, mem, tps, tps_full, _reason(i, task, v, mem, tps, memory_bytes,
                                                       min_tokens_per_second, context)))
    return out


def _reason(i: int, task: str, v: Variant, mem: MemoryEstimate, tps: float | None, budget: int,
            floor: float, context: int) -> str:
    params = _params(v, mem)
    size = f"{params / 1e9:.2f}B {'effective ' if v.model.effective_parameters else ''}parameters"
    fit = f"{_gb(mem.total_bytes)} of {_gb(budget)} at {context} tokens"
    speed = "" if tps is None else f", ~{tps:.0f} tokens/s here"
    if tps is not None and tps < floor:
        lead = f"fits but slow (under {floor:g} tokens/s here)"
    elif task == "edge":
        lead = "fastest that fits" if i == 0 else "fits"
    elif i == 0:
        lead = "largest model that fits, at its finest quantization that fits"
    else:
        lead = "fits"
    extra = ""
    if v.model.purpose == "function-calling":
        extra = "; " + (v.model.notes or "specialised for function calling")
    if v.model.effective_parameters:
        extra += "; weights from the raw parameter count (approximate)"
    return f"{lead}: {size}, {v.quantization} on {v.engine}, {fit}{speed}; {_where(v)}{extra}"


def _nothing_fits(task: str, device: str, budget: int, context: int,
                  too_big: list[tuple[Variant, MemoryEstimate]], short: list[str]) -> str:
    if not too_big:
        return (f"nothing serves {task} on {device} at {context} tokens: it is beyond the "
                f"context of {', '.join(short)}")
    v, mem = min(too_big, key=lambda r: r[1].total_bytes)
    parts = ", ".join(f"{k.replace('_', ' ')} {_gb(b)}" for k, b in mem.breakdown().items())
    return (f"nothing fits {_gb(budget)} for {task} on {device} at {context} tokens: the "
            f"smallest candidate, {v.model.id} {v.quantization} on {v.engine}, needs "
            f"{_gb(mem.total_bytes)} ({parts})"
            + ("; a shorter --context would need less" if mem.kv_cache_bytes
               + mem.scratch_bytes > mem.total_bytes - budget else ""))
