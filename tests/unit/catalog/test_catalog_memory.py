"""Memory = weights + KV cache (as each engine allocates it) + scratch + measured overhead."""

from __future__ import annotations

from dataclasses import replace

from gemmakit.catalog.data import load_catalog
from gemmakit.catalog.memory import (
    estimate,
    llamacpp_kv_bytes,
    llamacpp_scratch_bytes,
    transformers_kv_bytes,
)

MiB = 1 << 20


def test_llamacpp_kv_keeps_the_window_plus_one_micro_batch_on_sliding_layers():
    cat = load_catalog()
    a = cat.get("gemma-3-270m").architecture
    facts = cat.engine("llamacpp")
    # 1 head x 256 x f16, K and V: 1 KiB a token a layer. The 3 global layers hold the context,
    # the 15 sliding ones window + one micro-batch (512 + 256, rounded to 256): 16 sequences
    # of 8192 tokens in 564 MiB, as llama.cpp logs it (384 + 180 MiB).
    per_seq = 3 * 8192 + 15 * 768
    assert llamacpp_kv_bytes(a, facts, 8192, 16) == 16 * per_seq * 1024 == 564 * MiB
    # With swa_full the 15 sliding layers hold all 8192 cells too: 4 sequences, 576 MiB.
    full = {**facts, "swa_full": True}
    assert llamacpp_kv_bytes(a, full, 8192, 4) == 576 * MiB
    # Each sequence's cells are padded to 256; a short context caps the sliding layers too.
    assert llamacpp_kv_bytes(a, facts, 1000, 1) == llamacpp_kv_bytes(a, facts, 1024, 1)
    assert llamacpp_kv_bytes(a, facts, 512, 1) == 18 * 512 * 1024


def test_the_llamacpp_facts_are_the_engines_own_settings():
    """The estimate sizes what the engine allocates: its micro-batch and its swa_full default."""
    import inspect

    from gemmakit.engines.llamacpp import UBATCH, LlamaCppEngine
    from gemmakit.settings import Settings

    facts = load_catalog().engine("llamacpp")
    assert facts["ubatch"] == UBATCH
    default = inspect.signature(LlamaCppEngine).parameters["swa_full"].default
    assert facts["swa_full"] is default is Settings.model_fields["swa_full"].default


def test_transformers_kv_keeps_only_the_window_on_sliding_layers():
    cat = load_catalog()
    a = cat.get("gemma-3-4b").architecture
    facts = cat.engine("transformers")
    per_pos = 2 * 4 * 256 * 2  # (K+V, kv heads, head dim) in bf16
    assert transformers_kv_bytes(a, facts, 8192, 2) == (5 * 8192 + 29 * 1023) * per_pos
    # Gemma 3n: only the first 20 layers hold a cache.
    e2b = cat.get("gemma-3n-e2b").architecture
    assert transformers_kv_bytes(e2b, facts, 4096, 2) == \
        (4 * 4096 + 16 * 511) * 2 * 2 * 256 * 2


def test_llamacpp_scratch_grows_with_the_context_up_to_the_compute_buffer():
    cat = load_catalog()
    a = cat.get("gemma-3-270m").architecture
    facts = cat.engine("llamacpp")
    assert llamacpp_scratch_bytes(a, facts, 2048) == 9 * 256 * 2048 * 4
    # Past the logits of a full micro-batch (262144 x 256 x f32) the scores reuse that space.
    assert llamacpp_scratch_bytes(a, facts, 32768) == 262144 * 256 * 4
    assert llamacpp_scratch_bytes(a, {**facts, "flash_attention": True}, 4096) == 0


def test_estimate_adds_up_and_uses_the_measured_overhead():
    cat = load_catalog()
    m = cat.get("gemma-3-270m")
    e = estimate(m, cat, engine="llamacpp", quantization="Q4_K_M", context=4096, parallel=2)
    assert e.total_bytes == sum(e.breakdown().values())
    measured = cat.measured["llamacpp"]
    assert e.overhead_bytes == measured["fixed_bytes"] + 2 * measured["per_sequence_bytes"]
    assert measured["command"].startswith("python -m gemmakit.catalog.measure overhead")
    bare = estimate(m, replace(cat, measured={}), engine="llamacpp", quantization="Q4_K_M",
                    context=4096, parallel=2)
    assert bare.overhead_bytes == 0 and bare.notes


def test_transformers_estimate_runs_one_sequence():
    cat = load_catalog()
    e = estimate(cat.get("gemma-3-4b"), cat, engine="transformers", quantization="BF16",
                 context=4096, parallel=4)
    assert e.parallel == 1 and any("one sequence" in n for n in e.notes)


def test_gpu_memory_leaves_out_the_cpu_process_overhead():
    cat = load_catalog()
    m = cat.get("gemma-3-4b")
    cpu = estimate(m, cat, engine="transformers", quantization="BF16", context=4096)
    gpu = estimate(m, cat, engine="transformers", quantization="BF16", context=4096,
                   device="cuda")
    assert gpu.overhead_bytes == 0 < cpu.overhead_bytes
    assert gpu.scratch_bytes == cpu.scratch_bytes and "CUDA runtime" in gpu.notes[0]
