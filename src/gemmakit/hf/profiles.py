"""The transformers engine's loading profiles, per device:

| profile        | CUDA               | CPU                                 |
|----------------|--------------------|-------------------------------------|
| max-efficiency | bitsandbytes NF4   | torchao int8 weight-only + bf16     |
| balanced       | bitsandbytes int8  | bf16 (AVX512-BF16/AMX CPUs) or fp32 |
| performance    | bf16               | fp32                                |
| edge           | bitsandbytes int8  | torchao int8 weight-only + bf16     |

`edge` is 8-bit weights; its short context and single sequence are generic settings
(profiles.runtime_defaults).

A combination that cannot work (a library missing) is refused with the reason before anything
loads. torch is imported only when a plan is made.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gemmakit.errors import ConfigError
from gemmakit.profiles import PROFILES, ProfileRow, check_name


@dataclass(frozen=True)
class Plan:
    profile: str | None
    device: str
    dtype: Any  # torch.dtype or None (the checkpoint's own)
    quant: Literal["none", "torchao-int8", "bnb-nf4", "bnb-int8"] = "none"
    bits: int = 32

    @property
    def summary(self) -> str:
        q = "" if self.quant == "none" else f", {self.quant}"
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.profile or 'default'} on {self.device}: {dtype}{q}"

    def quantization_config(self) -> Any:
        if self.quant == "torchao-int8":
            from torchao.quantization import Int8WeightOnlyConfig
            from transformers import TorchAoConfig

            return TorchAoConfig(quant_type=Int8WeightOnlyConfig())
        if self.quant in ("bnb-nf4", "bnb-int8"):
            import torch
            from transformers import BitsAndBytesConfig

            if self.quant == "bnb-nf4":
                return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=torch.bfloat16,
                                          bnb_4bit_use_double_quant=True)
            return BitsAndBytesConfig(load_in_8bit=True)
        return None


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def transformers_plan(profile: str | None, device: str) -> Plan:
    """What `profile` means on `device`; ConfigError with the reason if it cannot be done."""
    import torch

    if profile is None:
        return Plan(None, device, None)
    check_name(profile)
    if device.startswith("cuda"):
        if profile == "performance":
            return Plan(profile, device, torch.bfloat16, bits=16)
        if not _has("bitsandbytes"):
            raise ConfigError(f"profile {profile} on CUDA needs bitsandbytes: "
                              "pip install bitsandbytes")
        if profile in ("balanced", "edge"):
            return Plan(profile, device, torch.bfloat16, "bnb-int8", bits=8)
        return Plan(profile, device, torch.bfloat16, "bnb-nf4", bits=4)
    if profile == "performance":
        return Plan(profile, device, torch.float32, bits=32)
    if profile == "balanced":
        return Plan(profile, device, torch.bfloat16 if cpu_has_bf16() else torch.float32,
                    bits=16 if cpu_has_bf16() else 32)
    if not _has("torchao"):
        raise ConfigError(f"profile {profile} on CPU needs torchao (int8 weight-only "
                          "quantization): pip install torchao")
    # The embedding (most of a small Gemma's weights) is not a linear layer and stays in bf16.
    return Plan(profile, device, torch.bfloat16 if cpu_has_bf16() else torch.float32,
                "torchao-int8", bits=8)


def _tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(f, framework="np") as st:
            for name in st.keys():
                shapes[name] = tuple(st.get_slice(name).get_shape())
    return shapes


def estimate_weights_bytes(shapes: dict[str, tuple[int, ...]], p: Plan) -> int:
    """Weights memory under plan `p`: quantizers convert the linear layers (2-D weights other than
    embeddings); everything else stays in the plan's dtype."""
    import math

    import torch

    base = (torch.finfo(p.dtype).bits if p.dtype is not None and p.dtype.is_floating_point
            else 32) / 8
    qbits = {"torchao-int8": 8, "bnb-int8": 8, "bnb-nf4": 4.5}.get(p.quant)  # nf4: + scales
    total = 0.0
    for name, shape in shapes.items():
        n = math.prod(shape)
        linear = len(shape) == 2 and "embed" not in name
        total += n * (qbits / 8 if qbits and linear else base)
    return int(total)


def profile_table(folder: Path, device: str | None = None) -> list[ProfileRow]:
    """One row per profile: the plan (or why it is refused) and its weights memory."""
    device = device or default_device()
    shapes = _tensor_shapes(folder)
    rows: list[ProfileRow] = []
    for prof in PROFILES:
        try:
            p = transformers_plan(prof, device)
        except ConfigError as e:
            rows.append({"profile": prof, "plan": None, "weights_bytes": None,
                         "refused": e.message})
            continue
        rows.append({"profile": prof, "plan": p.summary, "refused": None,
                     "weights_bytes": estimate_weights_bytes(shapes, p), "folder": str(folder)})
    return rows


def measure(folder: Path | str, profile: str, tokens: int = 32,
            threads: int | None = None) -> dict[str, Any]:
    """Load `folder` under `profile` in a fresh process and measure its peak resident memory above
    a baseline taken after importing torch/transformers, and greedy decode tokens/s over `tokens`
    tokens. One process per profile: memory freed by one load cannot hide the next one's."""
    import json
    import subprocess
    import sys

    code = ("import json,sys; from gemmakit.hf.profiles import _measure_here; "
            "print(json.dumps(_measure_here(*json.loads(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-c", code,
                          json.dumps([str(folder), profile, tokens, threads])],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ConfigError(f"measuring profile {profile} failed: "
                          f"{out.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _measure_here(folder: str, profile: str, tokens: int, threads: int | None) -> dict[str, Any]:
    import asyncio
    import resource
    import time

    import torch  # noqa: F401 - part of the baseline
    import transformers  # noqa: F401

    from gemmakit.engines.transformers import TransformersEngine
    from gemmakit.types import GenerationRequest, SamplingParams

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    baseline = rss()
    t0 = time.perf_counter()
    eng = TransformersEngine(folder, profile=profile, threads=threads, context_length=1024)
    load_s = time.perf_counter() - t0
    loaded = rss() - baseline  # what stays resident; the peak also holds the load's transients

    async def run() -> float | None:
        req = GenerationRequest(prompt_tokens=[2, *eng.tokenize("The history of the city")],
                                sampling=SamplingParams(temperature=0, max_tokens=tokens,
                                                        ignore_eos=True), request_id="measure")
        stats = None
        async for c in eng.stream(req):
            stats = c.stats or stats
        await eng.aclose()
        return stats.decode_tokens_per_s if stats else None

    tps = asyncio.run(run())
    from gemmakit.catalog.measure import peak_rss_bytes

    peak = peak_rss_bytes()
    return {"rss_added_bytes": loaded, "peak_rss_added_bytes": peak - baseline,
            "load_s": round(load_s, 2),
            "decode_tokens_per_s": round(tps, 2) if tps else None}
