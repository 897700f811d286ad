"""`gemmakit recommend`: ranked variants that fit, with reasons; why when nothing fits."""

from __future__ import annotations

import json

import pytest

from gemmakit.catalog.data import load_catalog
from gemmakit.catalog.recommend import NothingFits, recommend

GB = 10**9


def ids(rows):
    return [r.variant.model.id for r in rows]


def test_chat_ranks_the_largest_model_that_fits_first():
    rows = recommend(load_catalog(), task="chat", memory_bytes=8 * GB, bandwidth=100e9)
    assert rows and all(r.memory.total_bytes <= 8 * GB for r in rows)
    assert rows[0].variant.model.id == "gemma-3-4b"  # 12B at 4 bits is more than 8 GB here
    assert "largest model that fits" in rows[0].reason
    # Only instruction-tuned, general text models; llama.cpp on CPU.
    assert {r.variant.engine for r in rows} == {"llamacpp"}
    assert not {"medgemma-4b", "shieldgemma-2-4b", "functiongemma-270m"} & set(ids(rows))
    params = [r.memory.weights.parameters for r in rows]
    assert params == sorted(params, reverse=True)


def test_slow_variants_rank_after_fast_ones():
    rows = recommend(load_catalog(), task="chat", memory_bytes=64 * GB, bandwidth=20e9,
                     min_tokens_per_second=5)
    tps = [r.tokens_per_second for r in rows]
    first_slow = next(i for i, t in enumerate(tps) if t < 5)
    assert all(t >= 5 for t in tps[:first_slow]) and all(t < 5 for t in tps[first_slow:])
    assert "slow" in rows[first_slow].reason


def test_vision_and_audio_need_the_right_modality_and_engine():
    cat = load_catalog()
    vision = recommend(cat, task="vision", memory_bytes=64 * GB, device="cpu")
    assert set(ids(vision)) <= {"gemma-3-4b", "gemma-3-12b", "gemma-3-27b", "gemma-3n-e2b",
                                "gemma-3n-e4b"}
    assert {r.variant.engine for r in vision} == {"transformers"}
    audio = recommend(cat, task="audio", memory_bytes=64 * GB, device="cuda")
    assert set(ids(audio)) == {"gemma-3n-e2b", "gemma-3n-e4b"}
    assert all(r.tokens_per_second is None for r in audio)  # no GPU bandwidth given


def test_tools_includes_functiongemma_with_its_caveat():
    rows = recommend(load_catalog(), task="tools", memory_bytes=2 * GB)
    fg = [r for r in rows if r.variant.model.id == "functiongemma-270m"]
    assert fg and "fine-tuned" in fg[0].reason


def test_edge_ranks_the_fastest_first():
    rows = recommend(load_catalog(), task="edge", memory_bytes=4 * GB, bandwidth=20e9)
    tps = [r.tokens_per_second for r in rows]
    assert tps == sorted(tps, reverse=True)
    assert rows[0].variant.model.id == "gemma-3-270m"


def test_nothing_fits_says_why():
    cat = load_catalog()
    with pytest.raises(NothingFits, match=r"gemma-3n-e2b BF16 on transformers, needs"):
        recommend(cat, task="audio", memory_bytes=4 * GB)
    with pytest.raises(NothingFits, match="smallest candidate, gemma-3-270m"):
        recommend(cat, task="chat", memory_bytes=100 * 10**6)
    with pytest.raises(NothingFits, match="beyond the context"):
        recommend(cat, task="chat", memory_bytes=1000 * GB, context=1_000_000)


def test_recommend_json(capsys, tmp_path):
    from gemmakit.cli.main import main

    assert main(["recommend", "--task", "chat", "--memory", "8GB", "--json",
                 "--bandwidth", "20", "--home", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows
    for r in rows:
        for key in ("id", "quantization", "memory_bytes", "tokens_per_second_estimate",
                    "modalities", "reason"):
            assert key in r
        assert r["memory_bytes"] <= 8 * GB
    assert main(["recommend", "--task", "audio", "--memory", "1GB", "--json",
                 "--home", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [] and "nothing fits" in captured.err


def test_recommend_measure_stores_the_bandwidth(capsys, tmp_path, monkeypatch):
    from gemmakit.catalog import speed
    from gemmakit.cli.main import main

    fake = speed.Bandwidth(12e9, 2, 1 << 20, 0.1, "test machine")
    monkeypatch.setattr(speed, "probe_bandwidth", lambda **kw: fake)
    assert main(["recommend", "--task", "edge", "--memory", "2GB", "--measure",
                 "--home", str(tmp_path)]) == 0
    assert speed.load_bandwidth(tmp_path) == fake
    out = capsys.readouterr().out
    assert "12.0 GB/s" in out and "gemma-3-270m" in out
