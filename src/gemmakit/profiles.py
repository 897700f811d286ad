"""Loading profiles (the seed's `load_optimized_gemma` levels: max-efficiency 4-bit, balanced
8-bit, performance 16-bit), mapped per engine and device to what really works there:

| profile        | transformers, CUDA | transformers, CPU                   | llama.cpp        |
|----------------|--------------------|-------------------------------------|------------------|
| max-efficiency | bitsandbytes NF4   | torchao int8 weight-only + bf16     | the file's type  |
| balanced       | bitsandbytes int8  | bf16 (AVX512-BF16/AMX CPUs) or fp32 | the file's type  |
| performance    | bf16               | fp32                                | the file's type  |

llama.cpp serves a GGUF in its own type; when that does not match the profile, the plan says that
re-quantization is a separate step (llama-quantize), not a load option. A combination that cannot
work (a library missing) is refused with the reason before anything loads; nothing falls back
silently. torch is imported only when a transformers plan is made.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Literal

from gemmakit.errors import ConfigError

PROFILES: tuple[str, ...] = ("max-efficiency", "balanced", "performance")


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


def transformers_plan(profile: str | None, device: str) -> Plan:
    """What `profile` means on `device`; ConfigError with the reason if it cannot be done."""
    import torch

    if profile is None:
        return Plan(None, device, None)
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}' (choose from {', '.join(PROFILES)})")
    if device.startswith("cuda"):
        if profile == "performance":
            return Plan(profile, device, torch.bfloat16, bits=16)
        if not _has("bitsandbytes"):
            raise ConfigError(f"profile {profile} on CUDA needs bitsandbytes: "
                              "pip install bitsandbytes")
        if profile == "balanced":
            return Plan(profile, device, torch.bfloat16, "bnb-int8", bits=8)
        return Plan(profile, device, torch.bfloat16, "bnb-nf4", bits=4)
    if profile == "performance":
        return Plan(profile, device, torch.float32, bits=32)
    if profile == "balanced":
        return Plan(profile, device, torch.bfloat16 if cpu_has_bf16() else torch.float32,
                    bits=16 if cpu_has_bf16() else 32)
    if not _has("torchao"):
        raise ConfigError("profile max-efficiency on CPU needs torchao (int8 weight-only "
                          "quantization): pip install torchao")
    # The embedding (most of a small Gemma's weights) is not a linear layer and stays in bf16.
    return Plan(profile, device, torch.bfloat16 if cpu_has_bf16() else torch.float32,
                "torchao-int8", bits=8)


# Bits per weight of common GGUF file types (llama.cpp's own figures, rounded).
_GGUF_BITS = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K_M": 5.7,
              "Q5_K_S": 5.5, "Q5_0": 5.5, "Q5_1": 6, "Q4_K_M": 4.9, "Q4_K_S": 4.6, "Q4_0": 4.5,
              "Q4_1": 5, "Q3_K_M": 3.9, "Q3_K_S": 3.5, "Q3_K_L": 4.3, "Q2_K": 3.4,
              "IQ4_XS": 4.3, "IQ4_NL": 4.5}
# The bits per weight each profile stands for (the seed's 4 / 8 / 16), as a band of GGUF types.
_PROFILE_BANDS = {"max-efficiency": (0.0, 5.0), "balanced": (5.0, 9.0),
                  "performance": (9.0, 33.0)}


@dataclass(frozen=True)
class GgufPlan:
    profile: str
    file_type: str
    bits: float | None
    note: str | None = None

    @property
    def summary(self) -> str:
        s = f"{self.profile} on llama.cpp: {self.file_type} (the file's own type)"
        return f"{s}; {self.note}" if self.note else s


def llamacpp_plan(profile: str, file_type: str | None) -> GgufPlan:
    """llama.cpp serves a GGUF in its own type: the plan says so, and says when the file does not
    match the profile that re-quantizing is a separate step."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}' (choose from {', '.join(PROFILES)})")
    ft = (file_type or "unknown").upper()
    bits = _GGUF_BITS.get(ft)
    lo, hi = _PROFILE_BANDS[profile]
    note = None
    if bits is None or not lo < bits <= hi:
        want = {"max-efficiency": "4-bit (Q4_K_M)", "balanced": "8-bit (Q8_0)",
                "performance": "16-bit (F16/BF16)"}[profile]
        note = (f"the profile asks for {want} weights; re-quantization is a separate step "
                "(llama-quantize, or convert_hf_to_gguf.py from the original checkpoint), not a "
                "load option")
    return GgufPlan(profile, ft, bits, note)


def check(engine: str, model_format: str, model_path, profile: str | None) -> str | None:
    """Refuse an impossible engine/profile combination before anything loads; the plan summary."""
    if profile is None:
        return None
    if engine == "llamacpp":
        from gemmakit.engines.llamacpp import describe

        if model_format != "gguf":
            raise ConfigError("the llamacpp engine loads GGUF files")
        return llamacpp_plan(profile, describe(model_path)["file_type"]).summary
    if engine == "transformers":
        import torch

        return transformers_plan(profile, "cuda" if torch.cuda.is_available() else "cpu").summary
    raise ConfigError(f"the {engine} engine has no loading profiles")


# --- the table `gemmakit models --profiles MODEL` prints -----------------------------------
def _tensor_shapes(folder) -> dict[str, tuple[int, ...]]:
    from pathlib import Path

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


def profile_table(engine: str, ref, home, device: str | None = None) -> list[dict]:
    """One row per profile: the plan (or why it is refused) and its weights memory."""
    rows: list[dict] = []
    if engine == "llamacpp":
        from gemmakit.engines.llamacpp import describe

        ft = describe(ref.path)["file_type"]
        size = ref.path.stat().st_size
        for prof in PROFILES:
            gp = llamacpp_plan(prof, ft)
            rows.append({"profile": prof, "plan": gp.summary, "weights_bytes": size,
                         "refused": None})
        return rows
    import torch

    from gemmakit.hf.checkpoint import check_hf_folder, dense_from_gguf

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = dense_from_gguf(ref.path, home) if ref.format == "gguf" else ref.path
    if ref.format != "gguf":
        check_hf_folder(folder)
    shapes = _tensor_shapes(folder)
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


def measure(folder, profile: str, tokens: int = 32, threads: int | None = None) -> dict:
    """Load `folder` under `profile` in a fresh process and measure its peak resident memory above
    a baseline taken after importing torch/transformers, and greedy decode tokens/s over `tokens`
    tokens. One process per profile: memory freed by one load cannot hide the next one's."""
    import json
    import subprocess
    import sys

    code = ("import json,sys; from gemmakit.profiles import _measure_here; "
            "print(json.dumps(_measure_here(*json.loads(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-c", code,
                          json.dumps([str(folder), profile, tokens, threads])],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ConfigError(f"measuring profile {profile} failed: "
                          f"{out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure_here(folder: str, profile: str, tokens: int, threads: int | None) -> dict:
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"rss_added_bytes": loaded, "peak_rss_added_bytes": peak - baseline,
            "load_s": round(load_s, 2),
            "decode_tokens_per_s": round(tps, 2) if tps else None}
