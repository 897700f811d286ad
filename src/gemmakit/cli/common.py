"""What the subcommands share: settings flags and loading, logging set-up."""

from __future__ import annotations

import argparse
import logging
import sys

from gemmakit.cli.flags import add_model_flags, given
from gemmakit.settings import Settings

# Settings a command that loads a model in-process accepts.
ENGINE_FLAGS = ("home", "model", "engine", "context_length", "threads", "batch_size", "log_level",
                "profile")
# SamplingParams fields the terminal commands do not expose.
SAMPLING_SKIP = ("n", "logprobs", "top_logprobs", "logit_bias")


def settings_flags(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None,
                   skip: tuple[str, ...] = ()) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file (flags override it; it "
                   "overrides GEMMAKIT_* environment variables).")
    add_model_flags(p, Settings, only=only, skip=skip)


def load_settings(ns: argparse.Namespace) -> Settings:
    """Settings from flags > --config > environment > defaults; configures logging."""
    settings = Settings.load(getattr(ns, "config", None), **given(ns, Settings))
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return settings
