"""Exports of a stored adapter: the adapter alone as a GGUF LoRA (lora_gguf.py; the same file
the llama.cpp engine serves), and the base with the adapter merged as a GGUF."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gemmakit.errors import ConfigError
from gemmakit.finetune import store
from gemmakit.finetune.lora_gguf import convert


def _convert(adapter: store.Adapter, out: Path) -> Path:
    base = adapter.manifest["base"]
    return convert(adapter.path, out, model_type=str(base.get("model_type", "gemma3_text")),
                   num_layers=int(base.get("num_layers", 0) or _layers(adapter)))


def _layers(adapter: store.Adapter) -> int:
    import json

    cfg = json.loads((adapter.path / "adapter_config.json").read_text())
    return int(cfg.get("num_hidden_layers") or 64)


def ensure_lora_gguf(adapter: store.Adapter) -> Path:
    """The adapter's GGUF LoRA inside its store folder, converted on first use."""
    path = adapter.path / store.LORA_GGUF
    src = adapter.path / "adapter_model.safetensors"
    if not path.is_file() or path.stat().st_mtime_ns < src.stat().st_mtime_ns:
        _convert(adapter, path)
    return path


def lora_gguf(adapter: store.Adapter, out: Path) -> Path:
    """`gemmakit adapters export NAME --lora-gguf OUT.gguf`."""
    if out.exists():
        raise ConfigError(f"{out} exists already; remove it or pick another name")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    shutil.copyfile(ensure_lora_gguf(adapter), tmp)
    os.replace(tmp, out)
    return out
