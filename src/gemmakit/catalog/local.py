"""The shape and weights of a model file on disk, for sizing it without loading it: a GGUF
(its metadata and tensor table) or a Hugging Face folder (config.json and the safetensors
headers). `plan_fit` sizes `gemmakit serve --fit` from these, so it works for any local model,
not only the catalog's."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemmakit.catalog.data import Architecture, load_catalog
from gemmakit.catalog.gguf_file import GgufFile, read_gguf
from gemmakit.catalog.weights import DTYPE_BYTES, LINEAR_BITS, Weights, split_quantization
from gemmakit.errors import ConfigError

# The sliding-window layout llama.cpp gives each architecture (llama-model.cpp: set_swa_pattern);
# the GGUF does not carry it. Unknown architectures count every layer as global.
_GGUF_PATTERNS = {"gemma3": "LLLLLG", "gemma3n": "LLLLG", "gemma2": "LG"}


@dataclass(frozen=True)
class LocalModel:
    name: str
    format: str
    architecture: Architecture
    weights: Weights
    trained_context: int
    quantization: str


def _file_type(g: GgufFile) -> str:
    ft = g.metadata.get("general.file_type")
    try:
        from gguf import LlamaFileType

        return LlamaFileType(int(ft)).name.removeprefix("MOSTLY_")  # type: ignore[arg-type]
    except (ImportError, ValueError, TypeError):
        return str(ft)


def gguf_architecture(g: GgufFile) -> Architecture:
    m = g.metadata
    arch = str(m.get("general.architecture", ""))

    def key(name: str, default: Any = None) -> Any:
        v = m.get(f"{arch}.{name}", default)
        if v is None:
            raise ConfigError(f"the GGUF has no {arch}.{name}: cannot size it")
        return v

    layers = int(key("block_count"))
    heads = int(key("attention.head_count"))
    embd = next((t for t in g.tensors if t.name == "token_embd.weight"), None)
    vocab = int(embd.shape[1]) if embd else int(m.get("tokenizer.ggml.tokens.length", 0))
    window = m.get(f"{arch}.attention.sliding_window")
    shared = int(m.get(f"{arch}.attention.shared_kv_layers", 0) or 0)
    hidden = int(key("embedding_length"))
    return Architecture(
        layers=layers, hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        attention_heads=heads, kv_heads=int(key("attention.head_count_kv", heads)),
        head_dim=int(key("attention.key_length", hidden // heads)), vocab_size=vocab,
        sliding_window=int(window) if window else None,
        attention_pattern=_GGUF_PATTERNS.get(arch, "G") if window else "G",
        kv_layers=layers - shared if shared else None)


def gguf_local(path: Path, name: str | None = None) -> LocalModel:
    """A GGUF as llama.cpp holds it: its own tensors at their own types, plus llama.cpp's repacked
    copies (catalog [engines.llamacpp] repack_types)."""
    g = read_gguf(path)
    arch = gguf_architecture(g)
    repack = set(load_catalog().engine("llamacpp").get("repack_types", ()))
    data = sum(t.n_bytes for t in g.tensors)
    repacked = sum(t.n_bytes for t in g.tensors if t.type_name in repack and len(t.shape) == 2
                   and t.name != "token_embd.weight" and t.shape[1] % 8 == 0)
    params = sum(_prod(t.shape) for t in g.tensors)
    ctx = int(g.metadata.get(f"{g.metadata.get('general.architecture')}.context_length", 0))
    return LocalModel(name or path.stem, "gguf", arch, Weights(data + repacked, data, params,
                                                               repacked), ctx, _file_type(g))


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _safetensors_shapes(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) from each safetensors file's JSON header (8-byte length first)."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                out[k] = (tuple(v["shape"]), v["dtype"])
    return out


_ST_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4, "I64": 8}


def hf_architecture(config: dict[str, Any]) -> tuple[Architecture, int]:
    tc = config.get("text_config", config)
    layers = int(tc["num_hidden_layers"])
    heads = int(tc["num_attention_heads"])
    kinds = tc.get("layer_types")
    if kinds:
        pattern = "".join("L" if k == "sliding_attention" else "G" for k in kinds)
    else:
        pattern = "G"
    shared = int(tc.get("num_kv_shared_layers", 0) or 0)
    arch = Architecture(
        layers=layers, hidden_size=int(tc["hidden_size"]),
        intermediate_size=int(_first(tc["intermediate_size"])), attention_heads=heads,
        kv_heads=int(tc.get("num_key_value_heads", heads)),
        head_dim=int(tc.get("head_dim") or tc["hidden_size"] // heads),
        vocab_size=int(tc["vocab_size"]), sliding_window=tc.get("sliding_window"),
        attention_pattern=pattern, kv_layers=layers - shared if shared else None)
    return arch, int(tc.get("max_position_embeddings", 0))


def _first(v: Any) -> Any:
    return v[0] if isinstance(v, list) else v


def hf_local(folder: Path, quantization: str | None = None,
             name: str | None = None) -> LocalModel:
    """A Hugging Face folder as the transformers engine holds it: every tensor in its stored
    dtype (`dtype="auto"`), or under `quantization` (a label such as BF16 or INT8/BF16: 2-D
    tensors other than embeddings quantized, the rest in the dtype)."""
    config = json.loads((folder / "config.json").read_text())
    arch, ctx = hf_architecture(config)
    shapes = _safetensors_shapes(folder)
    if not shapes:
        raise ConfigError(f"'{folder.name}' has no *.safetensors weights")
    linear, dtype = split_quantization(quantization) if quantization else (None, None)
    total = text = 0.0
    params = 0
    for tname, (shape, st_dtype) in shapes.items():
        n = _prod(shape)
        params += n
        base = DTYPE_BYTES[dtype] if dtype else _ST_BYTES.get(st_dtype, 4)
        is_linear = len(shape) == 2 and "embed" not in tname
        b = n * (LINEAR_BITS[linear] / 8 if linear and is_linear else base)
        total += b
        if "vision" not in tname and "audio" not in tname:
            text += b
    by_dtype: dict[str, int] = {}
    for shape, st_dtype in shapes.values():
        by_dtype[st_dtype] = by_dtype.get(st_dtype, 0) + _prod(shape)
    label = quantization or max(by_dtype, key=lambda d: by_dtype[d])  # the dominant dtype
    return LocalModel(name or folder.name, "hf", arch, Weights(int(total), int(text), params),
                      ctx, label)


def local_model(path: Path, fmt: str, *, quantization: str | None = None,
                name: str | None = None) -> LocalModel:
    if fmt == "gguf":
        return gguf_local(path, name)
    return hf_local(path, quantization, name)
