"""Loading profiles: what each means per engine and device, and the refusals. Each engine owns
its profiles (`Engine.plan_profile`); an engine without any refuses through the contract's
default."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemmakit.catalog import ModelRef
from gemmakit.engines.llamacpp import llamacpp_plan
from gemmakit.errors import ConfigError
from gemmakit.hf import profiles


def test_llamacpp_serves_the_files_own_type_and_says_requantizing_is_separate():
    four = llamacpp_plan("max-efficiency", "Q4_K_M")
    assert four.note is None and "Q4_K_M" in four.summary
    for prof in ("balanced", "performance"):
        p = llamacpp_plan(prof, "Q4_K_M")
        assert p.file_type == "Q4_K_M" and "re-quantization is a separate step" in p.summary
    assert llamacpp_plan("balanced", "Q8_0").note is None
    assert llamacpp_plan("performance", "BF16").note is None
    with pytest.raises(ConfigError, match="unknown profile"):
        llamacpp_plan("turbo", "Q4_K_M")


def test_transformers_cpu_plans():
    torch = pytest.importorskip("torch")
    perf = profiles.transformers_plan("performance", "cpu")
    assert perf.dtype == torch.float32 and perf.quant == "none"
    bal = profiles.transformers_plan("balanced", "cpu")
    assert bal.dtype in (torch.bfloat16, torch.float32)
    assert profiles.transformers_plan(None, "cpu").dtype is None  # the checkpoint's own


def test_impossible_combinations_refused_with_the_reason(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(profiles, "_has", lambda module: False)
    with pytest.raises(ConfigError, match="bitsandbytes"):
        profiles.transformers_plan("max-efficiency", "cuda")
    with pytest.raises(ConfigError, match="bitsandbytes"):
        profiles.transformers_plan("balanced", "cuda")
    with pytest.raises(ConfigError, match="torchao"):
        profiles.transformers_plan("max-efficiency", "cpu")
    assert profiles.transformers_plan("performance", "cuda").bits == 16



def test_an_engine_without_profiles_refuses_them(fake_engine_class):
    ref = ModelRef("m", Path("m.gguf"), "gguf")
    with pytest.raises(ConfigError, match="the fake engine has no loading profiles"):
        fake_engine_class.plan_profile(ref, "balanced")
    with pytest.raises(ConfigError, match="no loading profiles"):
        fake_engine_class.profile_table(ref, Path("."))


def test_weights_estimate_follows_the_plan():
    torch = pytest.importorskip("torch")
    shapes = {"model.embed_tokens.weight": (1000, 64), "layers.0.mlp.up_proj.weight": (128, 64),
              "layers.0.norm.weight": (64,)}
    fp32 = profiles.estimate_weights_bytes(shapes, profiles.Plan("performance", "cpu",
                                                                 torch.float32))
    bf16 = profiles.estimate_weights_bytes(shapes, profiles.Plan("balanced", "cpu",
                                                                 torch.bfloat16))
    int8 = profiles.estimate_weights_bytes(shapes, profiles.Plan(
        "max-efficiency", "cpu", torch.bfloat16, "torchao-int8"))
    assert fp32 == (1000 * 64 + 128 * 64 + 64) * 4
    assert bf16 == fp32 // 2
    assert int8 == (1000 * 64 + 64) * 2 + 128 * 64  # only the linear layer is int8
