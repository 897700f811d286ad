"""`gemmakit ps`: the models a running server has loaded (its GET /api/ps), as `ollama ps`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

HELP = "Models loaded by a running server: size, context, slots, requests and expiry."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000",
                   help="The server's base URL (default: %(default)s).")
    p.add_argument("--api-key", default=os.environ.get("GEMMAKIT_API_KEY"),
                   help="Bearer key, if the server runs with --auth (default: $GEMMAKIT_API_KEY).")
    p.add_argument("--json", action="store_true",
                   help="Print the server's JSON (the models and the limits) instead of a table.")


def fetch(url: str, api_key: str | None) -> dict[str, Any]:
    import httpx

    from gemmakit.errors import GemmakitError, ServiceUnavailableError

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(f"{url.rstrip('/')}/api/ps", headers=headers, timeout=10)
    except httpx.HTTPError as e:
        raise ServiceUnavailableError(f"cannot reach {url}: {type(e).__name__}") from None
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        err = GemmakitError(f"{url}/api/ps answered HTTP {r.status_code}: {message}")
        raise err
    body: dict[str, Any] = r.json()
    return body


def _size(n: int | None) -> str:
    if not n:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.0f} {unit}" if n >= 100 * scale else f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def until(expires_at: str | None, state: str, in_flight: int, now: datetime) -> str:
    """Ollama's UNTIL column: "4 minutes from now", "Forever", or "in use"."""
    if state == "loading":
        return "loading"
    if in_flight:
        return "in use"
    if expires_at is None:
        return "Forever"
    left = (datetime.fromisoformat(expires_at) - now).total_seconds()
    if left <= 1:
        return "now"
    for unit, scale in (("hour", 3600), ("minute", 60)):
        if left >= scale:
            n = round(left / scale)
            return f"{n} {unit}{'s' if n != 1 else ''} from now"
    return f"{left:.0f} seconds from now"


def table(body: dict[str, Any], now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    rows = [("NAME", "SIZE", "CONTEXT", "SLOTS", "REQUESTS", "ENGINE", "UNTIL")]
    for m in body["models"]:
        rows.append((m["name"], _size(m["size"]), str(m.get("context_length") or "–"),
                     str(m["slots"]), str(m["requests_in_flight"]), m["details"]["engine"],
                     until(m["expires_at"], m["state"], m["requests_in_flight"], now)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def run(ns: argparse.Namespace) -> int:
    body = fetch(ns.url, ns.api_key)
    if ns.json:
        json.dump(body, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(table(body))
    return 0
