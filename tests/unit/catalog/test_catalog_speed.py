"""Speed from bytes per token and bandwidth; the bandwidth probe."""

from __future__ import annotations

import time

from gemmakit.catalog.data import load_catalog
from gemmakit.catalog.speed import (
    decode_tokens_per_second,
    kv_read_bytes_per_token,
    load_bandwidth,
    probe_bandwidth,
    save_bandwidth,
)


def test_kv_read_caps_sliding_layers_only_when_the_engine_does():
    a = load_catalog().get("gemma-3-270m").architecture  # 15 local, 3 global layers
    per_pos = 2 * 1 * 256 * 2
    assert kv_read_bytes_per_token(a, 4000, element_bytes=2, window_capped=True) == \
        (3 * 4000 + 15 * 512) * per_pos
    assert kv_read_bytes_per_token(a, 4000, element_bytes=2, window_capped=False) == \
        18 * 4000 * per_pos


def test_decode_bound():
    assert decode_tokens_per_second(1e9, 0, 20e9) == 20
    assert decode_tokens_per_second(0.9e9, 0.1e9, 20e9) == 20


def test_probe_is_short_and_positive(tmp_path):
    t0 = time.perf_counter()
    bw = probe_bandwidth(threads=1, buffer_mib=32, budget_s=0.2)
    assert time.perf_counter() - t0 < 10
    assert bw.bytes_per_second > 1e8 and bw.threads == 1
    save_bandwidth(tmp_path, bw)
    assert load_bandwidth(tmp_path) == bw
    assert load_bandwidth(tmp_path / "nowhere") is None
