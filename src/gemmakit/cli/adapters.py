"""`gemmakit adapters list | show NAME | rm NAME`: the adapter store (gemmakit.finetune.store)."""

from __future__ import annotations

import argparse
import json

from gemmakit.cli.common import load_settings, settings_flags

HELP = "List, show or remove fine-tuned adapters."


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
    raise AssertionError(ns.action)
