"""Weights memory, computed tensor by tensor from a model's architecture.

A Gemma text decoder is a token embedding (tied: it is the output layer too), per layer seven
matrices (attention q, k, v, output; MLP gate, up, down) and six norm vectors, and a final norm.
The bundled 270M's GGUF holds exactly these 268,098,176 elements, tensor for tensor.

Each tensor's storage type follows the file type the way llama.cpp's quantizer chooses it
(src/llama-quant.cpp): a "Q4_K_M" file is not 4.5 bits everywhere. The embedding takes the output
layer's type (Q6_K), some attn_v / ffn_down layers get Q6_K, and a matrix whose row length is not
a multiple of a type's block (256 for K-quants: the 270M's 640-wide rows) falls back to a 32-block
type. The 270M's "Q4_K_M" file is therefore 7.4 bits a weight on average, its embedding Q8_0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from gemmakit.catalog.data import Architecture, VisionEncoder
from gemmakit.errors import ConfigError

Category = Literal["token_embd", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                   "ffn_up", "ffn_down", "norm", "vision_linear", "vision_other"]


@dataclass(frozen=True)
class Tensor:
    name: str
    category: Category
    shape: tuple[int, ...]
    """GGUF order: shape[0] is the row length (the input dimension of a matrix)."""
    layer: int | None = None

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


def text_tensors(arch: Architecture) -> Iterator[Tensor]:
    """The text decoder's tensors (GGUF names), in file order."""
    d, ff, hd = arch.hidden_size, arch.intermediate_size, arch.head_dim
    q, kv = arch.attention_heads * hd, arch.kv_heads * hd
    yield Tensor("token_embd.weight", "token_embd", (d, arch.vocab_size))
    for i in range(arch.layers):
        p = f"blk.{i}."
        yield Tensor(p + "attn_q.weight", "attn_q", (d, q), i)
        yield Tensor(p + "attn_k.weight", "attn_k", (d, kv), i)
        yield Tensor(p + "attn_v.weight", "attn_v", (d, kv), i)
        yield Tensor(p + "attn_output.weight", "attn_output", (q, d), i)
        yield Tensor(p + "ffn_gate.weight", "ffn_gate", (d, ff), i)
        yield Tensor(p + "ffn_up.weight", "ffn_up", (d, ff), i)
        yield Tensor(p + "ffn_down.weight", "ffn_down", (ff, d), i)
        for norm, n in (("attn_norm", d), ("attn_q_norm", hd), ("attn_k_norm", hd),
                        ("post_attention_norm", d), ("ffn_norm", d), ("post_ffw_norm", d)):
            yield Tensor(p + norm + ".weight", "norm", (n,), i)
    yield Tensor("output_norm.weight", "norm", (d,))
    if not arch.tied_embeddings:  # pragma: no cover - every Gemma ties them
        yield Tensor("output.weight", "token_embd", (d, arch.vocab_size))


def vision_tensors(enc: VisionEncoder, text_hidden: int) -> Iterator[Tensor]:
    """A SigLIP encoder (with biases and LayerNorms) and Gemma 3's projector into the text
    width (an RMSNorm and one matrix)."""
    h, ff = enc.hidden_size, enc.intermediate_size
    patches = (enc.image_size // enc.patch_size) ** 2
    yield Tensor("v.patch_embd", "vision_other", (enc.patch_size, enc.patch_size, 3, h))
    yield Tensor("v.patch_embd.bias", "vision_other", (h,))
    yield Tensor("v.position_embd", "vision_other", (h, patches))
    for i in range(enc.layers):
        for m in ("q", "k", "v", "o"):
            yield Tensor(f"v.blk.{i}.attn_{m}", "vision_linear", (h, h), i)
            yield Tensor(f"v.blk.{i}.attn_{m}.bias", "vision_other", (h,), i)
        yield Tensor(f"v.blk.{i}.ffn_up", "vision_linear", (h, ff), i)
        yield Tensor(f"v.blk.{i}.ffn_up.bias", "vision_other", (ff,), i)
        yield Tensor(f"v.blk.{i}.ffn_down", "vision_linear", (ff, h), i)
        yield Tensor(f"v.blk.{i}.ffn_down.bias", "vision_other", (h,), i)
        for ln in ("ln1", "ln2"):
            yield Tensor(f"v.blk.{i}.{ln}", "vision_other", (2 * h,), i)  # weight + bias
    yield Tensor("v.post_ln", "vision_other", (2 * h,))
    yield Tensor("mm.soft_emb_norm", "vision_other", (h,))
    yield Tensor("mm.input_projection", "vision_linear", (h, text_hidden))


def parameter_count(arch: Architecture, *, vision: bool = True) -> int:
    n = sum(t.elements for t in text_tensors(arch))
    if vision and arch.vision_encoder is not None:
        n += sum(t.elements for t in vision_tensors(arch.vision_encoder, arch.hidden_size))
    return n


# --- storage types ---------------------------------------------------------------------------
def type_size(type_name: str) -> tuple[int, int]:
    """(elements per block, bytes per block) of a ggml type, from the gguf package's table."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    except KeyError:
        raise ConfigError(f"unknown tensor type {type_name}") from None


def tensor_bytes(t: Tensor, type_name: str) -> int:
    block, size = type_size(type_name)
    rows = t.elements // t.shape[0]
    return rows * (t.shape[0] // block) * size


# llama.cpp file types whose mixtures are reproduced here: their default matrix type.
LLAMACPP_FILE_TYPES: dict[str, str] = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0", "Q6_K": "Q6_K",
    "Q5_K_M": "Q5_K", "Q4_K_M": "Q4_K", "Q4_0": "Q4_0",
}
_UNQUANTIZED = {"F32", "F16", "BF16"}
# llama.cpp's fallback when a row is not a whole number of the type's blocks.
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "Q2_K": "Q4_0", "Q3_K": "Q4_0"}


def _use_more_bits(i: int, n: int) -> bool:
    # llama.cpp: the first and last eighth of the layers, and every third one between.
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(t: Tensor, type_name: str) -> str:
    block, _ = type_size(type_name)
    if t.shape[0] % block == 0:
        return type_name
    fb = _FALLBACK.get(type_name, "F16")
    return fb if t.shape[0] % type_size(fb)[0] == 0 else "F16"


def llamacpp_type(t: Tensor, file_type: str, n_layers: int,
                  recipe: dict[str, str] | None = None) -> str:
    """The type llama.cpp's quantizer gives tensor `t` in a `file_type` file (no imatrix, no
    overrides; dense Gemma, so none of the MoE or Falcon rules apply). `recipe` describes a
    non-llama.cpp file (the QAT GGUFs): {"token_embd": type, "default": type}."""
    if t.category == "norm" or len(t.shape) == 1:
        return "F32"
    if recipe is not None:
        return recipe["token_embd"] if t.category == "token_embd" else recipe["default"]
    if file_type not in LLAMACPP_FILE_TYPES:
        raise ConfigError(f"no llama.cpp mixture for file type {file_type} (known: "
                          f"{', '.join(LLAMACPP_FILE_TYPES)})")
    base = LLAMACPP_FILE_TYPES[file_type]
    if base in _UNQUANTIZED:
        return base
    new = base
    if t.category == "token_embd":  # tied embeddings take the output layer's type
        if t.shape[0] % type_size(base)[0] != 0:
            return "Q8_0"
        new = base if base == "Q8_0" else "Q6_K"
    elif t.category in ("attn_v", "ffn_down") and t.layer is not None:
        if file_type in ("Q4_K_M", "Q5_K_M") and _use_more_bits(t.layer, n_layers):
            new = "Q6_K"
    return _fallback(t, new)


def gguf_tensor_types(arch: Architecture, file_type: str,
                      recipe: dict[str, str] | None = None) -> dict[str, str]:
    """name -> type for every text tensor of a `file_type` GGUF of this architecture."""
    return {t.name: llamacpp_type(t, file_type, arch.layers, recipe) for t in text_tensors(arch)}


@dataclass(frozen=True)
class Weights:
    total_bytes: int
    """Resident: the file's tensors, plus the copies the engine makes (llama.cpp's repack)."""
    read_per_token_bytes: int
    """Read from memory for every generated token: every decoder matrix, the embedding as the
    output layer (tied), the norms; not the vision encoder."""
    parameters: int
    repacked_bytes: int = 0


def gguf_weights(arch: Architecture, file_type: str, *, recipe: dict[str, str] | None = None,
                 repack_types: tuple[str, ...] = ()) -> Weights:
    """A text GGUF of this architecture as llama.cpp holds it. On x86 CPUs llama.cpp copies
    Q4_0 / Q4_K / IQ4_NL matrices (except the embedding, a row lookup) into an interleaved buffer
    at load; the mapped originals stay resident too (both count in RSS)."""
    data = repacked = 0
    for t in text_tensors(arch):
        ty = llamacpp_type(t, file_type, arch.layers, recipe)
        b = tensor_bytes(t, ty)
        data += b
        if ty in repack_types and t.category != "token_embd" and len(t.shape) == 2 \
                and t.shape[1] % 8 == 0:
            repacked += b
    return Weights(data + repacked, data, parameter_count(arch, vision=False), repacked)


# --- transformers ----------------------------------------------------------------------------
DTYPE_BYTES = {"F32": 4.0, "BF16": 2.0, "F16": 2.0}
# Quantized linear layers (weight-only): bits per weight, scales included as profiles.py counts
# them (torchao int8; bitsandbytes NF4 with its block scales).
LINEAR_BITS = {"INT8": 8.0, "NF4": 4.5}


def transformers_quantization(linear: str | None, dtype: str) -> str:
    """The label of a transformers variant: "BF16", or "INT8/BF16" (int8 matrices, bf16 rest)."""
    return dtype if linear is None else f"{linear}/{dtype}"


def split_quantization(label: str) -> tuple[str | None, str]:
    if "/" in label:
        linear, dtype = label.split("/", 1)
        if linear not in LINEAR_BITS:
            raise ConfigError(f"unknown linear quantization {linear}")
        return linear, dtype
    return None, label


def hf_weights(arch: Architecture, quantization: str, *, vision: bool = True) -> Weights:
    """A transformers model in memory: every tensor in `dtype`, except 2-D matrices that are not
    embeddings under a weight-only quantization (the tied embedding stays in `dtype`)."""
    linear, dtype = split_quantization(quantization)
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {dtype} (known: {', '.join(DTYPE_BYTES)})")
    base = DTYPE_BYTES[dtype]
    qbytes = LINEAR_BITS[linear] / 8 if linear else base

    def size(t: Tensor) -> float:
        is_linear = t.category not in ("token_embd", "norm", "vision_other") and len(t.shape) == 2
        return t.elements * (qbytes if is_linear else base)

    text = sum(size(t) for t in text_tensors(arch))
    total = text
    if vision and arch.vision_encoder is not None:
        total += sum(size(t) for t in vision_tensors(arch.vision_encoder, arch.hidden_size))
    return Weights(int(total), int(text), parameter_count(arch, vision=vision))


def raw_weights(raw_parameters: int, effective_parameters: int | None, dtype: str) -> Weights:
    """Weights known only by their published parameter counts (Gemma 3n): all in `dtype`; the
    effective parameters are the ones read for each token."""
    b = DTYPE_BYTES[dtype]
    per_token = effective_parameters or raw_parameters
    return Weights(int(raw_parameters * b), int(per_token * b), raw_parameters)
