"""Weights computed tensor by tensor with llama.cpp's quantizer rules."""

from __future__ import annotations

from collections import Counter

from gemmakit.catalog.data import load_catalog
from gemmakit.catalog.weights import gguf_tensor_types, gguf_weights, hf_weights

REPACK = ("Q4_0", "Q4_K", "IQ4_NL")


def arch(mid: str):
    return load_catalog().get(mid).architecture


def test_q4_k_m_of_the_270m_is_not_4_bits_everywhere():
    types = gguf_tensor_types(arch("gemma-3-270m"), "Q4_K_M")
    # 640-wide rows are not whole 256-blocks: K-quants fall back, the embedding is Q8_0.
    assert types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.attn_q.weight"] == "Q5_0"
    assert types["blk.0.attn_output.weight"] == "Q4_K"  # 1024-wide rows
    kinds = Counter(t for n, t in types.items() if n.endswith("attn_v.weight"))
    assert kinds == {"Q8_0": 9, "Q5_0": 9}  # "more bits" layers: Q6_K, which falls back too
    down = Counter(t for n, t in types.items() if n.endswith("ffn_down.weight"))
    assert down == {"Q6_K": 9, "Q4_K": 9}


def test_270m_q4_k_m_bytes_match_the_bundled_file():
    w = gguf_weights(arch("gemma-3-270m"), "Q4_K_M", repack_types=REPACK)
    # The bundled file's tensor data is 246,587,904 bytes; llama.cpp logs a CPU_REPACK buffer of
    # 12.66 MiB for its Q4_K matrices.
    assert w.read_per_token_bytes == 246_587_904
    assert w.repacked_bytes == 13_271_040
    assert w.total_bytes == w.read_per_token_bytes + w.repacked_bytes


def test_google_qat_gguf_keeps_f16_embeddings():
    recipe = load_catalog().quantizations["QAT_Q4_0"]
    w = gguf_weights(arch("gemma-3-12b"), "Q4_0", recipe=recipe)
    # gemma-3-12b-it-q4_0.gguf is 8.07 GB (its metadata adds a few MB).
    assert abs(w.read_per_token_bytes / 8.07e9 - 1) < 0.005
    types = gguf_tensor_types(arch("gemma-3-12b"), "Q4_0", recipe)
    assert types["token_embd.weight"] == "F16" and types["blk.3.ffn_down.weight"] == "Q4_0"


def test_llamacpp_q4_0_embedding_takes_the_output_type():
    types = gguf_tensor_types(arch("gemma-3-4b"), "Q4_0")
    assert types["token_embd.weight"] == "Q6_K"  # 2560 = 10 blocks of 256
    assert set(types.values()) == {"Q6_K", "Q4_0", "F32"}


def test_unquantized_and_transformers_weights():
    a = arch("gemma-3-270m")
    f16 = gguf_weights(a, "F16")
    norms = 18 * (4 * 640 + 2 * 256) + 640
    assert f16.total_bytes == 2 * (268_098_176 - norms) + 4 * norms
    assert hf_weights(a, "F32", vision=False).total_bytes == 4 * 268_098_176
    bf16 = hf_weights(arch("gemma-3-4b"), "BF16")
    int8 = hf_weights(arch("gemma-3-4b"), "INT8/BF16")
    # int8 halves the matrices, not the (large, tied) embedding.
    embedding = 262144 * 2560 * 2
    assert int8.total_bytes < bf16.total_bytes
    assert int8.total_bytes > (bf16.total_bytes - embedding) / 2 + embedding * 0.99
    # Decoding never reads the vision encoder.
    assert bf16.read_per_token_bytes < bf16.total_bytes
