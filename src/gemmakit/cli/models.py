"""`gemmakit models`: what is available locally, read from each file's own metadata."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gemmakit.cli.common import load_settings, settings_flags

HELP = "List the models available locally."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="Machine-readable output.")
    p.add_argument("--profiles", metavar="MODEL", help="Show the loading profiles of MODEL for "
                   "--engine: what each means there and its weights memory (or why it is "
                   "refused).")
    p.add_argument("--measure", action="store_true", help="With --profiles and the transformers "
                   "engine: load each profile and measure resident memory and decode tokens/s.")
    settings_flags(p, ("home", "log_level", "engine", "threads"))


def run(ns: argparse.Namespace) -> int:
    from gemmakit.catalog import local_models
    from gemmakit.engines.llamacpp import describe

    settings = load_settings(ns)
    if ns.profiles:
        from gemmakit.cli.profiles import print_profiles

        return print_profiles(settings, ns.profiles, as_json=ns.json, measure=ns.measure)
    as_json = ns.json
    rows: list[dict[str, Any]] = []
    for ref in local_models(settings.models_dir):
        facts = describe(ref.path)
        rows.append({"name": ref.name, "path": str(ref.path), "format": ref.format,
                     "size_bytes": ref.path.stat().st_size, "quantization": facts["file_type"],
                     "context_length": facts["context_length"], "modalities": facts["modalities"],
                     "architecture": facts["architecture"]})
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "size", "quantization", "context", "modalities", "architecture", "path")
    for r in rows:
        table.add_row(r["name"], f"{r['size_bytes'] / 1e6:.1f} MB", str(r["quantization"]),
                      str(r["context_length"]), ",".join(r["modalities"]),
                      str(r["architecture"]), r["path"])
    Console().print(table)
    return 0
