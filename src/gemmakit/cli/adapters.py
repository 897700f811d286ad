"""`gemmakit adapters list | show NAME | rm NAME | export NAME`: the adapter store
(gemmakit.finetune.store) and its exports (gemmakit.finetune.export)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gemmakit.cli.common import load_settings, settings_flags

HELP = "List, show, remove or export fine-tuned adapters."


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="The adapters in the store.")
    ls.add_argument("--json", action="store_true", help="Print the list as JSON.")
    settings_flags(ls, ("home", "log_level"))
    show = sub.add_parser("show", help="One adapter's manifest (base, data, hyperparameters, "
                          "metrics).")
    show.add_argument("name", metavar="NAME")
    settings_flags(show, ("home", "log_level"))
    rm = sub.add_parser("rm", help="Remove an adapter.")
    rm.add_argument("name", metavar="NAME")
    settings_flags(rm, ("home", "log_level"))
    ex = sub.add_parser("export", help="Write an adapter as a GGUF: merged into its base "
                        "(--gguf) or adapter-only (--lora-gguf).")
    ex.add_argument("name", metavar="NAME")
    ex.add_argument("--gguf", type=Path, metavar="OUT.gguf", help="The base with the adapter "
                    "merged, as a GGUF (quantized with llama.cpp's quantizer to --type).")
    ex.add_argument("--type", default="Q8_0", metavar="TYPE", help="llama.cpp file type of "
                    "--gguf: F16, Q8_0, Q4_K_M, ... (default Q8_0).")
    ex.add_argument("--lora-gguf", type=Path, metavar="OUT.gguf", help="The adapter alone as "
                    "a GGUF LoRA (llama.cpp's --lora, llama-server's --lora).")
    ex.add_argument("--json", action="store_true", help="Print what was written as JSON.")
    settings_flags(ex, ("home", "log_level", "threads"))


def run(ns: argparse.Namespace) -> int:
    from gemmakit.finetune import store

    settings = load_settings(ns)
    home = settings.home
    if ns.action == "list":
        rows = [a.summary() for a in store.list_adapters(home)]
        if ns.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print("no adapters (gemmakit finetune DATA.jsonl --name NAME makes one)")
        else:
            w = max(len(r["name"]) for r in rows)
            for r in rows:
                loss = r["eval_loss_after"]
                print(f"{r['name']:<{w}}  base {r['base']}  {r['steps']} steps  "
                      + (f"eval loss {loss:.4f}  " if loss is not None else "")
                      + f"{r['created']}")
        return 0
    if ns.action == "show":
        print(json.dumps(store.get(home, ns.name).manifest, indent=2))
        return 0
    if ns.action == "rm":
        print(f"removed adapter '{ns.name}' ({store.remove(home, ns.name)})")
        return 0
    from gemmakit.errors import ConfigError
    from gemmakit.finetune import export

    if ns.gguf is None and ns.lora_gguf is None:
        raise ConfigError("adapters export: give --gguf OUT.gguf and/or --lora-gguf OUT.gguf")
    adapter = store.get(home, ns.name)
    out: dict[str, object] = {}
    if ns.lora_gguf is not None:
        out["lora_gguf"] = export.lora_gguf(adapter, ns.lora_gguf.expanduser())
    if ns.gguf is not None:
        out["gguf"] = export.merged_gguf(adapter, ns.gguf.expanduser(), ns.type, home=home,
                                         threads=settings.threads)
    if ns.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0
