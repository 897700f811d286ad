"""`gemmakit top`: live figures of a running server, read from its /metrics."""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gemmakit.monitoring.scrape import Figures, Scrape

HELP = "Live view of a running server's figures (read from its /metrics)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000",
                   help="The server's base URL (default: %(default)s).")
    p.add_argument("--interval", type=float, default=2.0,
                   help="Seconds between scrapes (default: %(default)s).")
    p.add_argument("--api-key", default=os.environ.get("GEMMAKIT_API_KEY"),
                   help="Bearer key, if the server protects /metrics "
                        "(default: $GEMMAKIT_API_KEY).")
    p.add_argument("--once", action="store_true",
                   help="Scrape twice, one interval apart, print one frame and exit.")


def _scrape(client, url: str) -> Scrape:
    import httpx

    from gemmakit.errors import ServiceUnavailableError
    from gemmakit.monitoring.scrape import parse

    try:
        r = client.get(f"{url.rstrip('/')}/metrics")
    except httpx.HTTPError as e:
        raise ServiceUnavailableError(f"cannot reach {url}: {type(e).__name__}") from None
    if r.status_code != 200:
        raise ServiceUnavailableError(f"{url}/metrics answered HTTP {r.status_code}")
    return parse(r.text, time.monotonic())


def _s(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def _n(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def render(url: str, now: Figures, life: Figures):
    from rich.table import Table

    t = Table(title=f"gemmakit top · {url} · every {now.interval_s:.1f} s", title_justify="left",
              expand=False)
    t.add_column("figure")
    t.add_column(f"last {now.interval_s:.0f} s", justify="right")
    t.add_column("since start", justify="right")
    t.add_row("requests / s", _n(now.request_rate), "")
    t.add_row("requests", _n(sum(now.statuses.values()), "{:.0f}"),
              _n(life.requests_total, "{:.0f}"))
    t.add_row("success rate", _n(now.success_rate, "{:.1%}"), _n(life.success_rate, "{:.1%}"))
    t.add_row("statuses", " ".join(f"{k}:{v:.0f}" for k, v in sorted(now.statuses.items())),
              " ".join(f"{k}:{v:.0f}" for k, v in sorted(life.statuses.items())))
    t.add_row("TTFT p50 / p95", f"{_s(now.ttft_p50)} / {_s(now.ttft_p95)}",
              f"{_s(life.ttft_p50)} / {_s(life.ttft_p95)}")
    t.add_row("latency p50 / p95", f"{_s(now.e2e_p50)} / {_s(now.e2e_p95)}",
              f"{_s(life.e2e_p50)} / {_s(life.e2e_p95)}")
    t.add_row("time per output token p50", _s(now.tpot_p50), _s(life.tpot_p50))
    t.add_row("queue time p95", _s(now.queue_p95), _s(life.queue_p95))
    t.add_row("generated tokens / s", _n(now.generation_tokens_per_s, "{:.1f}"),
              _n(life.generation_tokens_total, "{:.0f} total"))
    t.add_row("prompt tokens / s", _n(now.prompt_tokens_per_s, "{:.1f}"), "")
    t.add_row("running / waiting", f"{now.running:.0f} / {now.waiting:.0f}", "")
    t.add_row("KV cache in use", _n(now.kv_cache_usage_ratio, "{:.1%}"), "")
    t.add_row("memory (RSS)", _n(None if now.memory_rss_bytes is None
                                 else now.memory_rss_bytes / 2**20, "{:.0f} MiB"), "")
    return t


def run(ns: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console
    from rich.live import Live

    from gemmakit.monitoring.scrape import figures

    headers = {"Authorization": f"Bearer {ns.api_key}"} if ns.api_key else {}
    console = Console()
    with httpx.Client(headers=headers, timeout=10) as client:
        prev = _scrape(client, ns.url)
        if ns.once:
            time.sleep(ns.interval)
            cur = _scrape(client, ns.url)
            console.print(render(ns.url, figures(cur, prev), figures(cur, None)))
            return 0
        with Live(console=console, auto_refresh=False) as live:
            while True:
                time.sleep(ns.interval)
                cur = _scrape(client, ns.url)
                live.update(render(ns.url, figures(cur, prev), figures(cur, None)), refresh=True)
                prev = cur
