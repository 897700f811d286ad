"""Decode speed, estimated from bytes read per token and this machine's memory bandwidth.

Generating one token reads every decoder matrix once (the tied embedding too, as the output
layer) plus the KV cache of the positions each layer attends to. At batch size 1 that traffic,
not arithmetic, bounds a CPU: tokens/s <= bandwidth / bytes per token. The estimate is that bound;
the measured figure sits below it by the compute and scheduling the bound leaves out.

`probe_bandwidth` measures the bandwidth: a second or two of numpy reductions over a buffer far
larger than the caches, on as many threads as decoding uses (numpy releases the GIL inside a
reduction). The result is kept in the data directory so later `recommend` calls reuse it.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gemmakit.catalog.data import Architecture

BANDWIDTH_FILE = "bandwidth.json"


@dataclass(frozen=True)
class Bandwidth:
    bytes_per_second: float
    threads: int
    buffer_bytes: int
    seconds: float
    machine: str
    device: str = "cpu"
    measured_at: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def probe_bandwidth(*, threads: int | None = None, buffer_mib: int = 512,
                    budget_s: float = 1.5) -> Bandwidth:
    """Read bandwidth of main memory, in bytes/s: the best of several timed passes, each thread
    summing its own slice of one large float64 buffer (written once first, so every page is
    resident). Stops after about `budget_s` seconds."""
    import numpy as np

    threads = max(1, threads or os.cpu_count() or 1)
    n = buffer_mib * (1 << 20) // 8
    buf = np.ones(n, dtype=np.float64)  # (n,) 8-byte elements
    bounds = np.linspace(0, n, threads + 1, dtype=np.int64)
    slices = [buf[bounds[i]:bounds[i + 1]] for i in range(threads)]

    def one_pass() -> float:
        barrier = threading.Barrier(threads + 1)

        def work(s):
            barrier.wait()
            s.sum()

        workers = [threading.Thread(target=work, args=(s,)) for s in slices]
        for w in workers:
            w.start()
        barrier.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join()
        return time.perf_counter() - t0

    one_pass()  # warm: page faults and thread start-up out of the timed passes
    best, t_start, passes = float("inf"), time.perf_counter(), 0
    while passes < 3 or (time.perf_counter() - t_start < budget_s and passes < 50):
        best = min(best, one_pass())
        passes += 1
    return Bandwidth(buf.nbytes / best, threads, buf.nbytes,
                     round(time.perf_counter() - t_start, 2), _machine(), "cpu", time.time())


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def save_bandwidth(home: Path, bw: Bandwidth) -> Path:
    path = home / BANDWIDTH_FILE
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bw.to_json(), indent=2))
    return path


def load_bandwidth(home: Path) -> Bandwidth | None:
    try:
        return Bandwidth(**json.loads((home / BANDWIDTH_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def kv_read_bytes_per_token(arch: Architecture, position: int, *, element_bytes: float,
                            window_capped: bool) -> float:
    """KV cache bytes one new token reads at `position` (tokens already cached): every layer
    reads the positions it attends to, a sliding layer at most its window unless the engine
    keeps and scans the whole context there (llama.cpp with swa_full masks, it still reads).
    Layers that share another layer's cache (Gemma 3n) read it too."""
    per_pos = arch.kv_bytes_per_token(element_bytes)
    total = 0.0
    for kind in arch.layer_kinds():
        span = position
        if kind == "L" and window_capped and arch.sliding_window:
            span = min(position, arch.sliding_window)
        total += span * per_pos
    return total


def decode_tokens_per_second(weights_read_bytes: float, kv_read_bytes: float,
                             bandwidth: float) -> float:
    """The bandwidth bound on single-sequence decoding."""
    return bandwidth / (weights_read_bytes + kv_read_bytes)
