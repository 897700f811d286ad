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


def merged_gguf(adapter: store.Adapter, out: Path, qtype: str, *, home: Path,
                threads: int | None = None) -> dict[str, object]:
    """`gemmakit adapters export NAME --gguf OUT.gguf --type T`: the base GGUF with the adapter
    merged, quantized by llama.cpp's quantizer.

    llama.cpp's HF -> GGUF converter is not shipped with llama-cpp-python (nothing offline turns
    the dense folder back into a GGUF), so the base GGUF is the template: its metadata and
    tokenizer are copied, every tensor is dequantized to F32 (the very values training saw: the
    dense folder is this dequantization) and each adapted one gets ``alpha / r * B @ A`` added.
    That F32 GGUF is then quantized to `qtype` from full precision."""
    import tempfile

    from gemmakit.catalog.quantize import check_type, quantize

    check_type(qtype)
    if out.exists():
        raise ConfigError(f"{out} exists already; remove it or pick another name")
    base = Path(adapter.manifest["base"]["path"])
    if adapter.manifest["base"].get("format") != "gguf" or not base.is_file():
        raise ConfigError(f"--gguf needs the adapter's GGUF base ({base}); it is not there")
    if store.file_sha256(base) != adapter.base_sha256:
        raise ConfigError(f"{base} is not the file the adapter was trained on (sha256 differs)")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".gemmakit-merge-") as tmp:
        f32 = Path(tmp) / "merged-f32.gguf"
        merged = _write_merged_f32(base, adapter, f32)
        _, _, seconds = quantize(f32, out, qtype, threads=threads)
    return {"path": str(out), "type": qtype.upper(), "merged_tensors": merged,
            "quantize_seconds": round(seconds, 1), "bytes": out.stat().st_size}


def _write_merged_f32(base: Path, adapter: store.Adapter, out: Path) -> int:
    import gguf
    import numpy as np
    from gguf.quants import dequantize

    lora = gguf.GGUFReader(str(ensure_lora_gguf(adapter)))
    alpha = float(lora.fields["adapter.lora.alpha"].contents())
    factors: dict[str, dict[str, np.ndarray]] = {}
    for t in lora.tensors:
        name, part = t.name.rsplit(".", 1)  # blk.0.attn_q.weight, lora_a
        factors.setdefault(name, {})[part] = np.asarray(t.data, dtype=np.float32)
    reader = gguf.GGUFReader(str(base))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(out), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture",
                                                             "general.file_type"):
            continue
        value = field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    merged = 0
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)  # numpy shape (rows, cols)
        ab = factors.get(t.name)
        if ab is not None:
            a, b = ab["lora_a"], ab["lora_b"]  # (r, n_in), (n_out, r)
            w = w + (alpha / a.shape[0]) * (b @ a)
            merged += 1
        writer.add_tensor(t.name, np.ascontiguousarray(w))
    if merged != len(factors):
        raise ConfigError(f"the base has {merged} of the adapter's {len(factors)} tensors")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return merged
