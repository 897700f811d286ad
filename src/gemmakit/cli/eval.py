"""`gemmakit eval`: `quality` runs a JSONL suite against the local engine or any OpenAI-compatible
server and writes a JSON report; `tools` runs the tool-calling evaluation (gemmakit.tools)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from gemmakit.cli.common import ENGINE_FLAGS, settings_flags

HELP = "Evaluate a model: quality suites (quality) or tool calling (tools)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="eval_kind", required=True, metavar="KIND")
    q = sub.add_parser("quality", help="Run a JSONL quality suite and report scores and speed.",
                       description="Run a JSONL quality suite (see docs/monitoring.md) against "
                       "the local engine, in-process, or with --url any OpenAI-compatible server.")
    q.add_argument("suite", help="JSONL suite file, or 'builtin:NAME' for a suite gemmakit ships "
                   "(builtin:gemma-3-270m-base).")
    q.add_argument("--url", help="OpenAI-compatible server to evaluate instead of the local "
                   "engine (e.g. http://127.0.0.1:8000/v1).")
    q.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                   help="Bearer key for --url (default: $OPENAI_API_KEY).")
    q.add_argument("--output", "-o", metavar="FILE", help="Write the JSON report here "
                   "(default: eval-report.json).", default="eval-report.json")
    q.add_argument("--concurrency", type=int, default=1, help="Items in flight at once.")
    q.add_argument("--no-logprobs", action="store_true",
                   help="Do not ask for logprobs (servers that refuse them).")
    q.add_argument("--no-reference-perplexity", action="store_true",
                   help="Skip the reference-text perplexity (local engine only; one forced "
                   "step per reference token).")
    settings_flags(q, ENGINE_FLAGS)
    q.set_defaults(_eval=run_quality)

    t = sub.add_parser("tools", help="Tool-calling evaluation (gemmakit.tools.evaluate).",
                       description="Tool-calling evaluation: schema-valid, right-function and "
                       "argument exact-match rates, constrained and not (docs/tools.md).")
    from gemmakit.tools import evaluate  # light at import time: heavy work happens in run()

    evaluate.add_arguments(t)
    t.set_defaults(_eval=evaluate.run)


def run(ns: argparse.Namespace) -> int:
    return ns._eval(ns)


def suite_path(spec: str) -> Path:
    if spec.startswith("builtin:"):
        from importlib import resources

        return Path(str(resources.files("gemmakit.monitoring.evals") / "suites"
                        / f"{spec.removeprefix('builtin:')}.jsonl"))
    return Path(spec)


def run_quality(ns: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from gemmakit.cli.common import load_settings
    from gemmakit.monitoring.evals.runner import run_suite
    from gemmakit.monitoring.evals.suite import load_suite

    settings = load_settings(ns)
    items = load_suite(suite_path(ns.suite))
    console = Console(stderr=True)

    async def go() -> dict[str, Any]:
        target = _target(ns, settings)
        try:
            with Progress("[progress.description]{task.description}", BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task(f"eval {len(items)} items on {target.name}", total=len(items))
                return await run_suite(
                    items, target, logprobs=not ns.no_logprobs,
                    reference_perplexity=not ns.no_reference_perplexity,
                    concurrency=max(1, ns.concurrency),
                    on_done=lambda r: bar.advance(task))
        finally:
            await target.aclose()

    report = asyncio.run(go())
    report["suite"] = ns.suite
    Path(ns.output).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print_summary(report, Console())
    print(f"report: {ns.output}", file=sys.stderr)
    return 0


def _target(ns: argparse.Namespace, settings: Any) -> Any:
    from gemmakit.monitoring.evals.targets import HttpTarget, LocalTarget

    if ns.url:
        return HttpTarget(ns.url, ns.model, ns.api_key)
    from gemmakit import compose

    return LocalTarget(compose.load(settings))


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


_SHORT = {"exact_match": "exact", "json_valid": "json", "json_schema": "schema",
          "perplexity_reference": "ppl_ref", "perplexity_output": "ppl_out"}


def print_summary(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    items = Table(title=f"{report['suite']} on {report['target']}", title_justify="left")
    for col in ("id", "pass", "scores", "latency", "output"):
        items.add_column(col, overflow="fold")
    for r in report["items"]:
        mark = {True: "[green]yes[/]", False: "[red]no[/]", None: "–"}[r["passed"]]
        if not r["ok"]:
            items.add_row(r["id"], mark, "", "", f"[red]error: {r['error']}[/]")
            continue
        scores = " ".join(f"{_SHORT.get(k, k)}={v:.2f}" for k, v in r["scores"].items()
                          if v is not None)
        out = r["output"].strip().replace("\n", " ⏎ ")
        items.add_row(r["id"], mark, scores, _f(r["latency_s"], "{:.2f} s"),
                      out[:70] + ("…" if len(out) > 70 else ""))
    console.print(items)
    perf, qual = report["performance"], report["quality"]
    t = Table(title="summary", title_justify="left", show_header=False)
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("checks passed", f"{qual['passed']} / {qual['checked']} "
              f"({_f(qual['pass_rate'], '{:.0%}')})")
    for name, s in qual["scorers"].items():
        t.add_row(f"{name} (mean of {s['n']})", _f(s["mean"]))
    t.add_row("success rate", _f(perf["success_rate"], "{:.0%}"))
    t.add_row("latency p50 / p95", f"{_f(perf['latency_p50_s'], '{:.3f}')} / "
              f"{_f(perf['latency_p95_s'], '{:.3f}')} s")
    t.add_row("TTFT p50 / p95", f"{_f(perf['ttft_p50_s'], '{:.3f}')} / "
              f"{_f(perf['ttft_p95_s'], '{:.3f}')} s")
    t.add_row("decode tokens/s (mean)", _f(perf["tokens_per_s_avg"], "{:.1f}"))
    for name, v in qual["heuristics"].items():
        if name != "note":
            t.add_row(f"[dim]heuristic: {name}[/]", _f(v, "{:.2f}"))
    console.print(t)
