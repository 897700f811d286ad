"""How the vllm engine sizes vLLM's LoRA from the store (no vLLM needed: pure functions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemmakit.engines.vllm import adapters_for, lora_slots
from gemmakit.errors import ConfigError
from gemmakit.finetune import store


def test_lora_slots_round_up_to_vllms_ranks_and_cap_by_sequences() -> None:
    assert lora_slots([], 4) is None  # no adapters: LoRA off
    assert lora_slots([16], 4) == (16, 1)
    assert lora_slots([4, 16, 9], 2) == (16, 2)  # one adapter per sequence at most
    assert lora_slots([17], 4) == (32, 1)
    assert lora_slots([2], 4) == (8, 1)
    with pytest.raises(ConfigError, match="up to 512"):
        lora_slots([1024], 4)


def _stored(home: Path, name: str, base_sha: str, rank: int) -> None:
    d = store.adapters_dir(home) / name
    d.mkdir(parents=True)
    (d / store.MANIFEST).write_text(json.dumps({
        "base": {"model": "m", "sha256": base_sha},
        "hyperparameters": {"lora_rank": rank, "lora_alpha": 2 * rank}}))


def test_adapters_for_match_the_model_files_sha256(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights")
    assert adapters_for(model, tmp_path) == []  # empty store: nothing hashed
    _stored(tmp_path, "mine", store.file_sha256(model), 8)
    _stored(tmp_path, "theirs", "0" * 64, 64)
    got = adapters_for(model, tmp_path)
    assert [a.name for a in got] == ["mine"] and got[0].lora_rank == 8
