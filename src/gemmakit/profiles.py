"""Loading profiles: the names and what they stand for. Each engine maps them to what it supports
(`Engine.plan_profile`, `Engine.profile_table`): llama.cpp in `engines/llamacpp.py`, transformers
in `hf/profiles.py`. Generic code never branches on an engine's name.

| profile        | stands for                        |
|----------------|-----------------------------------|
| max-efficiency | the smallest weights (4-bit)      |
| balanced       | 8-bit weights                     |
| performance    | 16-bit weights                    |

A combination an engine cannot serve is refused with the reason before anything loads; nothing
falls back silently.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from gemmakit.errors import ConfigError

ProfileName = Literal["max-efficiency", "balanced", "performance"]
PROFILES: tuple[ProfileName, ...] = ("max-efficiency", "balanced", "performance")


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
