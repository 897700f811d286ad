"""`gemmakit recommend`: which Gemma, at which quantization, fits this machine for a task."""

from __future__ import annotations

import argparse
import json
import sys

from gemmakit.catalog.recommend import DEVICES, TASKS
from gemmakit.cli.common import load_settings, settings_flags

HELP = ("Rank the catalog's Gemma variants for a task within a memory budget, with computed "
        "memory and speed.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=TASKS, required=True, help="What the model is for: chat, "
                   "vision (image input), audio (audio input), tools (function calling), edge "
                   "(small and fast first).")
    p.add_argument("--memory", required=True, metavar="SIZE", help="Memory budget, e.g. 8GB or "
                   "512MiB (RAM on cpu, GPU memory on cuda).")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="Where it runs (default: "
                   "cpu). cpu: llama.cpp for text, transformers for images and audio; cuda: "
                   "transformers.")
    p.add_argument("--context", type=int, default=4096, metavar="N", help="Tokens of context "
                   "per sequence (default: 4096).")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="Sequences served at "
                   "once, each with its own --context of KV cache (default: 1).")
    p.add_argument("--measure", action="store_true", help="Probe this machine's memory "
                   "bandwidth first (a second or two) and keep it for later runs; speed "
                   "estimates come from it.")
    p.add_argument("--bandwidth", type=float, metavar="GB_PER_S", help="Memory bandwidth to "
                   "estimate speed from, instead of the probed one (needed for cuda).")
    p.add_argument("--min-tokens-per-second", type=float, default=5.0, metavar="TPS",
                   help="Variants slower than this here rank after the faster ones (default: 5).")
    p.add_argument("--json", action="store_true", help="Machine-readable output: a ranked list.")
    settings_flags(p, ("home", "log_level", "threads"))


def run(ns: argparse.Namespace) -> int:
    from gemmakit.catalog.data import load_catalog
    from gemmakit.catalog.fit import parse_bytes
    from gemmakit.catalog.recommend import NothingFits, recommend
    from gemmakit.catalog.speed import load_bandwidth, probe_bandwidth, save_bandwidth

    settings = load_settings(ns)
    budget = parse_bytes(ns.memory)
    notes: list[str] = []
    bandwidth = ns.bandwidth * 1e9 if ns.bandwidth else None
    probed = None
    if ns.measure:
        probed = probe_bandwidth(threads=settings.threads)
        save_bandwidth(settings.home, probed)
        notes.append(f"memory bandwidth {probed.bytes_per_second / 1e9:.1f} GB/s "
                     f"({probed.threads} threads, probed now)")
    if bandwidth is None:
        if ns.device == "cuda":
            notes.append("no speed estimates: give the GPU's --bandwidth (the probe measures "
                         "main memory)")
        else:
            bw = probed or load_bandwidth(settings.home)
            if bw is None:
                notes.append("no speed estimates: run with --measure once to probe this "
                             "machine's memory bandwidth")
            else:
                bandwidth = bw.bytes_per_second
                if probed is None:
                    notes.append(f"memory bandwidth {bandwidth / 1e9:.1f} GB/s (probed "
                                 "earlier; --measure probes again)")
    try:
        ranked = recommend(load_catalog(), task=ns.task, memory_bytes=budget, device=ns.device,
                           context=ns.context, parallel=ns.parallel, bandwidth=bandwidth,
                           min_tokens_per_second=ns.min_tokens_per_second)
    except NothingFits as e:
        if ns.json:
            print("[]")
        print(f"gemmakit: {e.message}", file=sys.stderr)
        return 1
    if ns.json:
        print(json.dumps([r.to_json() for r in ranked], indent=2))
        for n in notes:
            print(f"gemmakit: {n}", file=sys.stderr)
        return 0
    from rich.console import Console
    from rich.table import Column, Table

    table = Table("#", Column("model", no_wrap=True), "quantization", "engine", "memory", "tokens/s",
                  title=f"{ns.task} on {ns.device} within {budget / 1e9:.1f} GB, "
                        f"{ns.context} tokens x {ns.parallel}")
    for i, r in enumerate(ranked, 1):
        tps = "?" if r.tokens_per_second is None else f"{r.tokens_per_second:.0f}"
        table.add_row(str(i), r.variant.model.id, r.variant.quantization, r.variant.engine,
                      f"{r.memory.total_bytes / 1e9:.2f} GB", tps)
    console = Console()
    console.print(table)
    for i, r in enumerate(ranked, 1):
        console.print(f"{i}. {r.reason}", highlight=False)
    for n in notes:
        console.print(f"[dim]{n}[/dim]")
    return 0
