"""A PEFT LoRA adapter as a GGUF LoRA, the format llama.cpp's convert_lora_to_gguf.py writes and
`llama_adapter_lora_init` (llama-server's --lora) reads:

- metadata: ``general.architecture`` (the base's llama.cpp architecture, ``gemma3``),
  ``general.type = "adapter"``, ``adapter.type = "lora"``, ``adapter.lora.alpha`` (float);
- per adapted weight, the base tensor's GGUF name plus ``.lora_a`` and ``.lora_b``
  (``blk.3.attn_q.weight.lora_a``): A as PEFT stores it, (r, n_in), and B, (n_out, r). llama.cpp
  applies ``scale * alpha / r * B @ A``, PEFT's scaling.

Names go through the gguf package's own HF -> GGUF tensor map for the architecture (the
mapping llama.cpp's converters use). Gemma's q/k projections are not permuted by its converter,
so A and B are written as they are. Only the decoder's projections can be written: an adapter on
the (tied) embeddings or the output layer is refused."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from gemmakit.errors import ConfigError

LLAMA_ARCH = {"gemma3_text": "gemma3", "gemma3": "gemma3", "gemma3n": "gemma3n",
              "gemma3n_text": "gemma3n"}
"""transformers model_type -> llama.cpp architecture name."""
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


def convert(adapter_dir: Path, out: Path, *, model_type: str, num_layers: int) -> Path:
    """Write `adapter_dir`'s PEFT adapter as a GGUF LoRA at `out` (atomically); returns `out`."""
    import gguf
    from safetensors.numpy import load_file

    arch_name = LLAMA_ARCH.get(model_type)
    if arch_name is None:
        raise ConfigError(f"no GGUF LoRA conversion for a '{model_type}' base")
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    names = gguf.get_tensor_name_map(arch, num_layers)
    config: dict[str, Any] = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_dora") or config.get("use_rslora"):
        raise ConfigError("DoRA and rsLoRA adapters have no GGUF LoRA form")
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise ConfigError(f"the adapter holds '{key}', which a GGUF LoRA cannot carry "
                              "(only LoRA A/B matrices of linear layers)")
        module = m.group("module").replace("model.language_model.", "model.")
        name = names.get_name(module)
        if name is None or not name.startswith("blk."):
            raise ConfigError(f"'{module}' is not a decoder projection llama.cpp can adapt "
                              "(LoRA on the embeddings or the output layer has no GGUF LoRA form "
                              "here; train with the default --lora-targets)")
        pairs.setdefault(name, {})[m.group("ab")] = value
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    writer = gguf.GGUFWriter(str(tmp), arch_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for name in sorted(pairs):
        ab = pairs[name]
        if set(ab) != {"A", "B"}:
            raise ConfigError(f"the adapter's '{name}' lacks its LoRA {'AB'.strip(''.join(ab))}")
        writer.add_tensor(f"{name}.weight.lora_a", ab["A"].astype("float32"))  # (r, n_in)
        writer.add_tensor(f"{name}.weight.lora_b", ab["B"].astype("float32"))  # (n_out, r)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
