"""`gemmakit keys create|list|revoke|rotate`: API keys for `gemmakit serve --auth`.

A key's secret is printed once, when it is created or rotated; only its sha256 is stored."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from gemmakit.cli.common import load_settings, settings_flags

HELP = "Manage API keys (for `gemmakit serve --auth`)."


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    c = sub.add_parser("create", help="Create a key and print its secret (once).",
                       description="Create a key and print its secret (shown only this once).")
    c.add_argument("name", help="A unique name for the key (what usage and logs show).")
    c.add_argument("--rpm", type=_positive, help="Requests per minute (default: unlimited).")
    c.add_argument("--tpm", type=_positive, help="Tokens per minute, prompt + completion "
                   "(default: unlimited).")
    # dest: not `models`, which is a server setting (--model NAME=MODEL ...) that load_settings reads.
    c.add_argument("--models", dest="key_models", metavar="MODELS",
                   help="Comma-separated models the key may use (default: all).")
    c.add_argument("--expires", metavar="DATE", help="Expiry: YYYY-MM-DD or an ISO date-time "
                   "(UTC unless it names a zone).")
    c.add_argument("--json", action="store_true", help="Machine-readable output.")
    lst = sub.add_parser("list", help="List keys: names, limits, created, last used (never "
                         "secrets).", description="List keys (never their secrets).")
    lst.add_argument("--all", action="store_true", help="Include revoked keys.")
    lst.add_argument("--json", action="store_true", help="Machine-readable output.")
    r = sub.add_parser("revoke", help="Revoke a key (it stops working at once).",
                       description="Revoke a key (it stops working at once).")
    r.add_argument("name")
    ro = sub.add_parser("rotate", help="Give a key a new secret (printed once); the old one "
                        "stops working.", description="Give a key a new secret (printed once); "
                        "the old one stops working at once. Name and limits stay.")
    ro.add_argument("name")
    ro.add_argument("--json", action="store_true", help="Machine-readable output.")
    for sp in (c, lst, r, ro):
        settings_flags(sp, ("home", "store", "log_level"))


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _row(k) -> dict:
    return {"name": k.name, "id": f"gk-{k.id}", "rpm": k.rpm, "tpm": k.tpm,
            "models": list(k.models) if k.models is not None else None,
            "created": _when(k.created_at), "expires": _when(k.expires_at),
            "last_used": _when(k.last_used_at),
            "revoked": _when(k.revoked_at) if k.revoked_at else None}


def _print_secret(k, secret: str, as_json: bool, verb: str) -> None:
    if as_json:
        print(json.dumps({**_row(k), "secret": secret}))
        return
    print(secret)
    print(f"{verb} key '{k.name}'. Store the secret above now: it is not stored and cannot be "
          "shown again.", file=sys.stderr)


def run(ns: argparse.Namespace) -> int:
    from gemmakit.safety.auth import KeyStore, parse_expiry
    from gemmakit.safety.store import open_state_store

    settings = load_settings(ns)
    state = open_state_store(settings.store, settings.home)  # --store: SQLite or PostgreSQL
    store = KeyStore(state)
    try:
        if ns.keys_command == "create":
            models = ns.key_models.split(",") if ns.key_models else None
            key, secret = store.create(ns.name, rpm=ns.rpm, tpm=ns.tpm, models=models,
                                       expires_at=parse_expiry(ns.expires))
            _print_secret(key, secret, ns.json, "Created")
        elif ns.keys_command == "rotate":
            key, secret = store.rotate(ns.name)
            _print_secret(key, secret, ns.json, "Rotated")
        elif ns.keys_command == "revoke":
            store.revoke(ns.name)
            print(f"Revoked key '{ns.name}'.", file=sys.stderr)
        else:
            rows = [_row(k) for k in store.list(include_revoked=ns.all)]
            if ns.json:
                print(json.dumps(rows, indent=2))
                return 0
            from rich.console import Console
            from rich.table import Table

            table = Table("name", "id", "rpm", "tpm", "models", "created", "expires",
                          "last used", *(["revoked"] if ns.all else []))
            for r in rows:
                table.add_row(r["name"], r["id"], str(r["rpm"] or "-"), str(r["tpm"] or "-"),
                              ",".join(r["models"]) if r["models"] else "all", r["created"],
                              r["expires"], r["last_used"], *([r["revoked"] or "-"]
                                                              if ns.all else []))
            Console().print(table)
    finally:
        state.close()
    return 0
