"""What mixing adapters in one llama.cpp server costs: aggregate decode tokens/s of 4 concurrent
greedy requests (ignore_eos, 48 tokens each) all on the base, half base / half adapter, and all
on the adapter, on a real server with --parallel 4.

    python -m tests.integration.finetune.mixing ADAPTER [--home HOME]

(ADAPTER: a stored adapter on the bundled model, e.g. from `gemmakit finetune`.) Prints JSON."""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.integration.conftest import MODEL, start_server, stop_server

TOKENS = 48


def _one(base_url: str, model: str, i: int) -> int:
    r = httpx.post(f"{base_url}/v1/chat/completions", timeout=600, json={
        "model": model, "messages": [{"role": "user", "content": f"Count to {20 + i}."}],
        "temperature": 0, "max_tokens": TOKENS, "ignore_eos": True})
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"])


def measure(base_url: str, models: list[str], rounds: int = 2) -> float:
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(models)) as pool:
            n = sum(pool.map(lambda a: _one(base_url, a[1], a[0]), enumerate(models)))
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("--home", type=Path, default=Path.home() / ".local/share/gemmakit")
    ns = ap.parse_args()
    tmp = Path("/tmp")
    s = start_server(ns.home, tmp, "--adapters", ns.adapter, "--parallel", "4",
                     "--threads", "2")
    try:
        _one(s.base_url, ns.adapter, 0)  # warm both
        out = {"base x4": measure(s.base_url, [MODEL] * 4),
               "base x2 + adapter x2": measure(s.base_url, [MODEL, ns.adapter] * 2),
               "adapter x4": measure(s.base_url, [ns.adapter] * 4)}
    finally:
        stop_server(s)
    print(json.dumps({k: round(v, 1) for k, v in out.items()}, indent=2))


if __name__ == "__main__":
    main()
