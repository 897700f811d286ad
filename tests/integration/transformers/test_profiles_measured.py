"""`gemmakit models --profiles MODEL --measure`: each profile loaded in its own process and
measured (memory, decode speed) on the tiny Gemma 3."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_profiles_measured_on_tiny_gemma3(tiny_dir, gemmakit_home):
    out = subprocess.run([sys.executable, "-m", "gemmakit", "models", "--profiles",
                          str(tiny_dir / "gemma3"), "--engine", "transformers", "--measure",
                          "--json", "--home", str(gemmakit_home), "--threads", "2"],
                         capture_output=True, text=True, check=True, timeout=600)
    rows = {r["profile"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {"max-efficiency", "balanced", "performance", "edge"}
    for r in rows.values():
        assert r["refused"] is None
        assert r["peak_rss_added_bytes"] > 0 and r["decode_tokens_per_s"] > 0
    # Weights shrink with the profile: fp32 > bf16 > int8 linear layers + bf16 embedding. On a
    # CPU without BF16 instructions balanced stays fp32 (bf16 would be emulated, and slow).
    from gemmakit.hf.profiles import cpu_has_bf16

    w = {k: r["weights_bytes"] for k, r in rows.items()}
    if cpu_has_bf16():
        assert w["performance"] > w["balanced"]
    else:
        assert w["performance"] == w["balanced"]
    assert w["balanced"] > w["max-efficiency"]
    assert w["edge"] == w["max-efficiency"]  # 8-bit weights, as max-efficiency's


def test_llamacpp_profiles_name_the_gguf_type(model_path, gemmakit_home):
    out = subprocess.run([sys.executable, "-m", "gemmakit", "models", "--profiles",
                          "gemma-3-270m", "--json", "--home", str(gemmakit_home)],
                         capture_output=True, text=True, check=True, timeout=300)
    rows = {r["profile"]: r for r in json.loads(out.stdout)}
    assert "Q4_K_M" in rows["max-efficiency"]["plan"]
    assert "re-quantization is a separate step" in rows["performance"]["plan"]
    assert rows["balanced"]["weights_bytes"] == model_path.stat().st_size
