"""plan_fit (for `gemmakit serve --fit`): context and --parallel that fit a budget, from the
model file itself. A small GGUF with a Gemma 3 shape stands in for a real one."""

from __future__ import annotations

import numpy as np
import pytest

from gemmakit.catalog.fit import parse_bytes, plan_fit
from gemmakit.catalog.gguf_file import read_gguf
from gemmakit.catalog.local import gguf_local
from gemmakit.errors import ConfigError

MB = 10**6


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A 2-layer gemma3 GGUF (F32 tensors; vocabulary 1024, width 256, 4096 trained tokens)."""
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny-gemma3.gguf"
    w = gguf.GGUFWriter(str(path), "gemma3")
    d, ff, heads, kv, hd, vocab = 256, 512, 4, 1, 64, 1024
    w.add_context_length(4096)
    w.add_embedding_length(d)
    w.add_block_count(2)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_sliding_window(128)
    w.add_file_type(0)  # ALL_F32
    w.add_token_list([f"t{i}" for i in range(vocab)])
    rng = np.zeros

    w.add_tensor("token_embd.weight", rng((vocab, d), dtype=np.float32))
    for i in range(2):
        for name, shape in (("attn_q", (heads * hd, d)), ("attn_k", (kv * hd, d)),
                            ("attn_v", (kv * hd, d)), ("attn_output", (d, heads * hd)),
                            ("ffn_gate", (ff, d)), ("ffn_up", (ff, d)), ("ffn_down", (d, ff))):
            w.add_tensor(f"blk.{i}.{name}.weight", rng(shape, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_norm.weight", rng((d,), dtype=np.float32))
    w.add_tensor("output_norm.weight", rng((d,), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_the_gguf_reader_reads_shape_and_metadata(tiny_gguf):
    g = read_gguf(tiny_gguf)
    assert g.metadata["gemma3.block_count"] == 2
    assert g.metadata["tokenizer.ggml.tokens.length"] == 1024
    embd = next(t for t in g.tensors if t.name == "token_embd.weight")
    assert embd.shape == (256, 1024) and embd.type_name == "F32"
    lm = gguf_local(tiny_gguf)
    a = lm.architecture
    assert (a.layers, a.hidden_size, a.kv_heads, a.head_dim, a.vocab_size) == (2, 256, 1, 64, 1024)
    assert a.attention_pattern == "LLLLLG" and lm.trained_context == 4096
    assert lm.weights.read_per_token_bytes == g.tensor_bytes


def test_a_large_budget_keeps_the_default_sixteen_sequences_of_the_trained_context(tiny_gguf):
    p = plan_fit(tiny_gguf, 4000 * MB)
    assert (p.parallel, p.context_length) == (16, 4096)
    assert p.memory_bytes <= 4000 * MB and "--parallel 16" in p.summary()
    assert plan_fit(tiny_gguf, 4000 * MB, preferred_parallel=4).parallel == 4


def test_a_tight_budget_trades_sequences_then_context(tiny_gguf):
    full = plan_fit(tiny_gguf, 4000 * MB)
    one_seq = plan_fit(tiny_gguf, 4000 * MB, parallel=1).memory_bytes
    # Just under what 16 sequences of the target context need: fewer sequences, same context.
    p = plan_fit(tiny_gguf, full.memory_bytes - 1)
    assert p.parallel < 16 and p.context_length == 4096
    # Under one sequence of the full context: one sequence, shorter context.
    p1 = plan_fit(tiny_gguf, one_seq - 1)
    assert p1.parallel == 1 and p1.context_length < 4096 and p1.context_length % 256 == 0
    assert p1.memory_bytes <= one_seq - 1


def test_fixed_values_stay_fixed(tiny_gguf):
    p = plan_fit(tiny_gguf, 4000 * MB, context_length=1024)
    assert p.context_length == 1024 and p.parallel == 16
    p = plan_fit(tiny_gguf, 4000 * MB, parallel=2)
    assert p.parallel == 2 and p.context_length == 4096
    with pytest.raises(ConfigError, match="does not fit"):
        plan_fit(tiny_gguf, 10 * MB, context_length=4096, parallel=4)
    with pytest.raises(ConfigError, match="beyond the model's trained context"):
        plan_fit(tiny_gguf, 4000 * MB, context_length=8192)


def test_nothing_fits_says_what_the_smallest_needs(tiny_gguf):
    with pytest.raises(ConfigError, match=r"nothing fits 1.00 MB: .* needs .*\(weights"):
        plan_fit(tiny_gguf, 1 * MB)


def test_transformers_runs_one_sequence(tiny_gguf):
    p = plan_fit(tiny_gguf, 4000 * MB, engine="transformers")
    assert p.parallel == 1 and p.estimate.engine == "transformers"
    gpu = plan_fit(tiny_gguf, 4000 * MB, engine="transformers", device="cuda")
    assert gpu.estimate.overhead_bytes == 0 < p.estimate.overhead_bytes


def test_parse_bytes():
    assert parse_bytes("8GB") == 8 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5g") == 1_500_000_000
    assert parse_bytes("4000") == 4000
    for bad in ("lots", "-1GB", "8XB"):
        with pytest.raises(ConfigError):
            parse_bytes(bad)


def test_swa_full_plans_the_whole_context_in_the_sliding_layers(tiny_gguf):
    window = plan_fit(tiny_gguf, 4000 * MB, context_length=4096, parallel=4)
    full = plan_fit(tiny_gguf, 4000 * MB, context_length=4096, parallel=4, swa_full=True)
    # Window 128 + micro-batch 256 = 384 cells per sequence on a sliding layer, 4096 with swa_full.
    assert full.estimate.kv_cache_bytes > 4 * window.estimate.kv_cache_bytes
    assert full.memory_bytes - window.memory_bytes == (full.estimate.kv_cache_bytes
                                                       - window.estimate.kv_cache_bytes)
    assert plan_fit(tiny_gguf, 4000 * MB, context_length=4096, parallel=4,
                    swa_full=False).memory_bytes == window.memory_bytes
