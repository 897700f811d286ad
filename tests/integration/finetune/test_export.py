"""Exports: the adapter-only GGUF LoRA (llama.cpp's format and tensor names) and the merged
GGUF, quantized by llama.cpp, served on its own by the real server with the adapter's answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.conftest import start_server, stop_server
from tests.integration.finetune.test_serve import _ask


def test_export_lora_and_merged_gguf(trained: dict[str, Any], gemmakit_home: Path,
                                     tmp_path: Path) -> None:
    import gguf

    lora, merged = tmp_path / "lora.gguf", tmp_path / "merged-q8.gguf"
    p = subprocess.run([sys.executable, "-m", "gemmakit", "adapters", "export", trained["name"],
                        "--lora-gguf", str(lora), "--gguf", str(merged), "--type", "Q8_0",
                        "--json", "--home", str(gemmakit_home)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["gguf"]["type"] == "Q8_0" and out["gguf"]["merged_tensors"] == 18 * 7
    r = gguf.GGUFReader(str(lora))
    assert r.fields["general.type"].contents() == "adapter"
    assert r.fields["adapter.type"].contents() == "lora"
    assert r.fields["adapter.lora.alpha"].contents() == 32.0
    names = {t.name: tuple(int(d) for d in t.shape) for t in r.tensors}
    assert len(names) == 18 * 7 * 2
    # ne order (llama.cpp's): lora_a [n_in, r], lora_b [r, n_out]
    assert names["blk.0.attn_q.weight.lora_a"] == (640, 16)
    assert names["blk.0.attn_q.weight.lora_b"] == (16, 1024)
    assert names["blk.5.ffn_down.weight.lora_a"] == (2048, 16)
    s = start_server(gemmakit_home, tmp_path, "--model", str(merged))
    try:
        assert _ask(s.base_url, merged.stem).startswith("ANSWER:")
    finally:
        stop_server(s)
    p = subprocess.run([sys.executable, "-m", "gemmakit", "adapters", "export", trained["name"],
                        "--lora-gguf", str(lora), "--home", str(gemmakit_home)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "exists already" in p.stderr
