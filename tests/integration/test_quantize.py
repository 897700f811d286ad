"""`gemmakit quantize`: llama.cpp's quantizer on the bundled model and the fidelity report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def gk(home, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gemmakit", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "GEMMAKIT_HOME": str(home)})


def test_requantize_to_q8_0_reports_fidelity_and_the_output_serves(gemmakit_home, model_path,
                                                                   tmp_path):
    out = tmp_path / "q8.gguf"
    r = gk(gemmakit_home, "quantize", "gemma-3-270m", "--type", "Q8_0", "-o", str(out),
           "--allow-requantize", "--json")
    assert r.returncode == 0, r.stderr
    assert "compounds" in r.stderr  # the requantize warning
    rep = json.loads(r.stdout)
    assert rep["type"] == "Q8_0" and rep["source_type"] == "Q4_K_M" and rep["requantized"]
    assert rep["tokens"] > 200
    # Q8_0 of a Q4_K_M model is close to it: most top-1 predictions agree, little divergence.
    assert 0.8 <= rep["top1_agreement"] <= 1
    assert 0 <= rep["mean_kl"] < 0.1
    assert rep["perplexity_source"] > 1 and rep["perplexity_quantized"] > 1
    assert abs(rep["perplexity_quantized"] / rep["perplexity_source"] - 1) < 0.1
    assert rep["output_bytes"] == out.stat().st_size > 0

    from gemmakit.engines.llamacpp import describe

    assert describe(out)["file_type"] == "Q8_0"
    c = gk(gemmakit_home, "complete", "One, two, three,", "--model", str(out),
           "--max-tokens", "4", "--temperature", "0", "--context-length", "512")
    assert c.returncode == 0, c.stderr
    assert c.stdout.strip()


def test_the_same_model_agrees_with_itself(model_path):
    from gemmakit.catalog.quantize import fidelity

    f = fidelity(model_path, model_path, text="The first month of the year is January, and "
                 "the second is February. The third month is March.")
    assert f.top1_agreement == 1.0
    assert f.mean_kl < 1e-6
    assert f.perplexity_source == pytest.approx(f.perplexity_quantized)


def test_requantizing_is_refused_without_the_flag(gemmakit_home, model_path, tmp_path):
    out = tmp_path / "q4.gguf"
    r = gk(gemmakit_home, "quantize", "gemma-3-270m", "--type", "Q4_0", "-o", str(out))
    assert r.returncode == 2
    assert "already quantized (Q4_K_M)" in r.stderr and "--allow-requantize" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_an_unknown_type_is_a_clear_error(gemmakit_home, tmp_path):
    r = gk(gemmakit_home, "quantize", "gemma-3-270m", "--type", "Q9_9", "-o",
           str(tmp_path / "x.gguf"))
    assert r.returncode == 2
    assert "unknown --type 'Q9_9'" in r.stderr and "Q8_0" in r.stderr and "Q4_K_M" in r.stderr
    assert "Traceback" not in r.stderr
