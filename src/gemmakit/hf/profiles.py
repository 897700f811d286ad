"""Loading profiles for the transformers engine (the seed's `load_optimized_gemma` levels), mapped
per device to what really works there:

| profile        | CUDA                     | CPU                                                  |
|----------------|--------------------------|------------------------------------------------------|
| max-efficiency | bitsandbytes 4-bit NF4   | torchao int8 weights (int4 needs CUDA kernels: refused)|
| balanced       | bitsandbytes 8-bit       | bf16 weights (where the CPU has AVX512-BF16), else fp32|
| performance    | bf16                     | fp32                                                 |

A combination that cannot work (a library missing, a kernel this device lacks) is refused with the
reason before anything loads; nothing falls back silently.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Literal

from gemmakit.errors import ConfigError

ProfileName = Literal["max-efficiency", "balanced", "performance"]
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
        return f"{self.profile or 'default'} on {self.device}: {str(self.dtype).removeprefix('torch.')}{q}"

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


def plan(profile: str | None, device: str) -> Plan:
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
    return Plan(profile, device, torch.float32, "torchao-int8", bits=8)
