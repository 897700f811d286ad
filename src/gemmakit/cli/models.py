"""`gemmakit models`: what is available locally, read from each file's own metadata; with
`--catalog`, the Gemma family as published (gemmakit/catalog/data/gemma.toml)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gemmakit.cli.common import load_settings, settings_flags

HELP = "List the models available locally."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="Machine-readable output.")
    p.add_argument("--catalog", action="store_true", help="List the Gemma family as published "
                   "(sizes, architecture, context, modalities, licence, checkpoints; each fact "
                   "with its source) instead of the local files.")
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
    if ns.catalog:
        return print_catalog(as_json=ns.json)
    if ns.profiles:
        from gemmakit.cli.profiles import print_profiles

        return print_profiles(settings, ns.profiles, as_json=ns.json, measure=ns.measure)
    as_json = ns.json
    rows: list[dict[str, Any]] = []
    for ref in local_models(settings.models_dir):
        facts = describe(ref.path) if ref.format == "gguf" else _hf_facts(ref.path)
        size = (ref.path.stat().st_size if ref.path.is_file()
                else sum(f.stat().st_size for f in ref.path.iterdir() if f.is_file()))
        rows.append({"name": ref.name, "path": str(ref.path), "format": ref.format,
                     "size_bytes": size, "quantization": facts["file_type"],
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


def _hf_facts(folder: Path) -> dict[str, Any]:
    """The same facts for a Hugging Face folder (a pulled safetensors checkpoint)."""
    from gemmakit.catalog.local import hf_local

    config = json.loads((folder / "config.json").read_text())
    m = hf_local(folder)
    return {"file_type": m.quantization, "context_length": m.trained_context or None,
            "modalities": ["text", *(["image"] if "vision_config" in config else []),
                           *(["audio"] if "audio_config" in config else [])],
            "architecture": (config.get("architectures") or [config.get("model_type")])[0]}


def print_catalog(*, as_json: bool) -> int:
    from gemmakit.catalog.data import load_catalog, model_json

    rows = [model_json(m) for m in load_catalog().models]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Column, Table

    table = Table(Column("id", no_wrap=True), "params", "layers (L/G)", "heads/kv/dim",
                  "window", "context", "modalities", "tuning", "purpose")
    for r in rows:
        a = r["architecture"] or {}
        params = r["parameters"]
        p = "?" if params is None else f"{params / 1e9:.2f}B" + ("" if r["parameters_computed"]
                                                               else "~")
        layers = f"{a['layers']} ({a['local_layers']}/{a['global_layers']})" if a else "?"
        heads = f"{a['attention_heads']} / {a['kv_heads']} / {a['head_dim']}" if a else "?"
        table.add_row(r["id"], p, layers, heads, str(a.get("sliding_window") or "-"),
                      str(r["context_length"] or "?"), ",".join(r["modalities"]),
                      ",".join(t[:4] for t in r["tunings"]), r["purpose"])
    console = Console()
    console.print(table)
    console.print("[dim]~: the published raw count, not computed. --json gives every fact's "
                  "source, the licence and the published checkpoints.[/dim]")
    return 0
