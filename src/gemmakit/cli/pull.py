"""`gemmakit pull REPO[:FILE]`: a checkpoint from the Hugging Face Hub into the data directory,
under the catalog's name (catalog/pull.py)."""

from __future__ import annotations

import argparse
import json

from gemmakit.cli.common import load_settings, settings_flags

HELP = "Download a model from the Hugging Face Hub (resumable, sha256-checked)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="REPO[:FILE]", help="A Hugging Face repository (owner/name) "
                   "and, for a repository of several GGUF files, the one to fetch "
                   "(google/gemma-3-1b-it-qat-q4_0-gguf, ggml-org/gemma-3-27b-it-GGUF:"
                   "gemma-3-27b-it-Q4_K_M.gguf). A repository of one GGUF gets that file; one "
                   "of safetensors gets the checkpoint folder.")
    p.add_argument("--revision", default="main", help="Branch, tag or commit (default: main).")
    p.add_argument("--name", help="Store under this name instead of the catalog's (or the "
                   "file's) name.")
    p.add_argument("--json", action="store_true", help="Print the stored pull as JSON.")
    settings_flags(p, ("home", "log_level"))


def run(ns: argparse.Namespace) -> int:
    from gemmakit.catalog.pull import pull

    settings = load_settings(ns)
    p = pull(ns.spec, settings.models_dir, revision=ns.revision, name=ns.name)
    if ns.json:
        print(json.dumps({**p.to_json(), "path": str(p.path)}, indent=2))
    else:
        size = sum(f["size"] or 0 for f in p.files)
        print(f"{p.name}: {p.repo}@{p.revision[:12]}, {len(p.files)} file(s), "
              f"{size / 1e6:.1f} MB, hashes checked -> {p.path}\n"
              f"serve it with: gemmakit serve --model {p.name}")
    return 0
