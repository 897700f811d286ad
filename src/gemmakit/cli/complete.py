"""`gemmakit complete`: raw text completion in the terminal."""

from __future__ import annotations

import argparse

from gemmakit.cli.chat import add_engine_and_sampling_flags
from gemmakit.cli.chat import run as run  # the chat runner handles both commands

HELP = "Raw text completion (no chat format)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="Text to continue.")
    add_engine_and_sampling_flags(p)
