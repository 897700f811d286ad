"""`gemmakit usage`: the usage ledger, summed per key and model."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from gemmakit.cli.common import load_settings, settings_flags

HELP = "Show API usage from the ledger (requests, tokens, errors, latency) per key and model."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", metavar="NAME", help="Only this key.")
    p.add_argument("--since", default="24h", help="A duration ago (90m, 24h, 7d) or an ISO "
                   "date / date-time (default: 24h).")
    p.add_argument("--json", action="store_true", help="Machine-readable output.")
    settings_flags(p, ("home", "store", "log_level"))


def run(ns: argparse.Namespace) -> int:
    from gemmakit.safety.store import open_state_store
    from gemmakit.safety.usage import parse_since, read_summary

    settings = load_settings(ns)
    since = parse_since(ns.since)
    state = open_state_store(settings.store, settings.home)  # --store: SQLite or PostgreSQL
    try:
        rows = read_summary(state, since=since, key_name=ns.key)
    finally:
        state.close()
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    start = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = Table("key", "model", "requests", "errors", "prompt tokens", "completion tokens",
                  "mean latency", "last request", title=f"usage since {start}")
    for r in rows:
        table.add_row(r["key_name"] or "(no key)", r["model"] or "-", str(r["requests"]),
                      str(r["errors"]), str(r["prompt_tokens"]), str(r["completion_tokens"]),
                      f"{r['mean_latency_ms']:.0f} ms",
                      datetime.fromtimestamp(r["last_ts"], UTC).strftime(
                          "%Y-%m-%d %H:%M:%S"))
    Console().print(table)
    return 0
