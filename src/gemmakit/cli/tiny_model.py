"""`gemmakit tiny-model gemma3|gemma3n OUT_DIR`"""

from __future__ import annotations

import argparse
from pathlib import Path

from gemmakit.cli.common import load_settings, settings_flags

HELP = ("Write a tiny randomly initialised Gemma 3 (vision) or Gemma 3n (audio) checkpoint for "
        "smoke tests (its outputs are random).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["gemma3", "gemma3n"],
                   help="gemma3: with a small SigLIP vision tower; gemma3n: with its audio tower.")
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path,
                   help="Folder to write (must not exist or be empty).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random initialisation.")
    settings_flags(p, ("home", "log_level"))


def run(ns: argparse.Namespace) -> int:
    from gemmakit.catalog.bundled import ensure_bundled
    from gemmakit.hf.checkpoint import tokenizer_from_gguf
    from gemmakit.hf.tiny import write_tiny_model

    settings = load_settings(ns)
    gguf = ensure_bundled(settings.models_dir)
    out = write_tiny_model(ns.kind, ns.out_dir, tokenizer_from_gguf(gguf, settings.home),
                           seed=ns.seed)
    print(out)
    return 0
