"""Loading profiles: the names and what they stand for. Each engine maps them to what it supports
(`Engine.plan_profile`, `Engine.profile_table`): llama.cpp in `engines/llamacpp.py`, transformers
in `hf/profiles.py`. Generic code never branches on an engine's name.

| profile        | stands for                        |
|----------------|-----------------------------------|
| max-efficiency | the smallest weights (4-bit)      |
| balanced       | 8-bit weights                     |
| performance    | 16-bit weights                    |
| edge           | the smallest footprint (below)    |

`edge` also sets a 2048-token context and one sequence unless they are given, and each engine
adds its small-memory settings: llama.cpp a small batch, a q8_0 KV cache with flash attention and
no repacked weight copies (the GGUF's own type); transformers 8-bit weights (torchao int8
weight-only on CPU, bitsandbytes int8 on CUDA).

A combination an engine cannot serve is refused with the reason before anything loads; nothing
falls back silently.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from gemmakit.errors import ConfigError

ProfileName = Literal["max-efficiency", "balanced", "performance", "edge"]
PROFILES: tuple[ProfileName, ...] = ("max-efficiency", "balanced", "performance", "edge")

# What `edge` sets among the generic settings, unless they are given (Settings applies it); each
# engine adds its own small-memory settings (Engine.from_settings reads the profile).
EDGE_CONTEXT = 2048
_RUNTIME: dict[str, dict[str, Any]] = {"edge": {"context_length": EDGE_CONTEXT, "parallel": 1}}


def runtime_defaults(profile: str | None) -> dict[str, Any]:
    """Settings a profile changes when they are not given: `edge` -> a 2048-token context and
    one sequence."""
    return dict(_RUNTIME.get(profile or "", {}))


class ProfileRow(TypedDict, total=False):
    """One row of `gemmakit models --profiles`."""

    profile: str
    plan: str | None
    weights_bytes: int | None
    refused: str | None
    folder: str


def check_name(profile: str) -> None:
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}' (choose from {', '.join(PROFILES)})")
