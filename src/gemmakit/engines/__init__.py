"""Engines are plugins found through the `gemmakit.engines` entry-point group; gemmakit's own
(llamacpp, …) register through the same door a third-party package uses. Only the chosen engine's
module is imported, so `import gemmakit` never imports llama_cpp or torch."""

from __future__ import annotations

from importlib.metadata import entry_points

from gemmakit.engines.base import Engine
from gemmakit.errors import ConfigError

GROUP = "gemmakit.engines"


def available() -> dict[str, str]:
    """Engine name -> "module:Class" for every installed engine."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def engine_class(name: str) -> type[Engine]:
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            return ep.load()
    names = ", ".join(sorted(available())) or "none installed"
    raise ConfigError(f"unknown engine '{name}' (available: {names})")


__all__ = ["Engine", "available", "engine_class"]
