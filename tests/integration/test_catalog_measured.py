"""The catalog against the real bundled model: its facts against the GGUF's own metadata and
tensors, the memory estimate against the measured peak RSS of both engines (within 15 %), the
llama.cpp type rules against files llama.cpp itself quantizes, and `plan_fit` against a real
engine. Each RSS figure comes from a fresh process (gemmakit.catalog.measure).

The decode-speed check times generation, so it runs only when asked, on a quiet machine:
    GEMMAKIT_TIMING=1 pytest tests/integration/test_catalog_measured.py -k decode -s
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import pytest

from gemmakit.catalog.data import load_catalog
from gemmakit.catalog.gguf_file import read_gguf
from gemmakit.catalog.measure import measure_decode, measure_rss
from gemmakit.catalog.weights import gguf_tensor_types

pytestmark = pytest.mark.integration

TOLERANCE = 0.15
THREADS = min(os.cpu_count() or 1, 4)


def test_catalog_facts_match_the_bundled_gguf(model_path: Path):
    from gemmakit.engines.llamacpp import read_gguf_metadata

    meta = read_gguf_metadata(model_path)  # read by llama.cpp itself
    m = load_catalog().get("gemma-3-270m")
    a = m.architecture
    assert meta["general.architecture"] == "gemma3"
    assert meta["general.size_label"] == m.size_label
    assert int(meta["gemma3.block_count"]) == a.layers
    assert int(meta["gemma3.embedding_length"]) == a.hidden_size
    assert int(meta["gemma3.feed_forward_length"]) == a.intermediate_size
    assert int(meta["gemma3.attention.head_count"]) == a.attention_heads
    assert int(meta["gemma3.attention.head_count_kv"]) == a.kv_heads
    assert int(meta["gemma3.attention.key_length"]) == a.head_dim
    assert int(meta["gemma3.attention.value_length"]) == a.head_dim
    assert int(meta["gemma3.attention.sliding_window"]) == a.sliding_window
    assert int(meta["gemma3.context_length"]) == m.context_length
    bundled = next(c for c in m.checkpoints if c.bundled)
    assert model_path.name == bundled.file

    g = read_gguf(model_path)
    assert g.metadata["tokenizer.ggml.tokens.length"] == a.vocab_size
    # Tensor for tensor: the names, shapes and element count the catalog computes, and the
    # types llama.cpp's Q4_K_M mixture gives them.
    predicted = gguf_tensor_types(a, bundled.quantization)
    assert {t.name: t.type_name for t in g.tensors} == predicted
    from gemmakit.catalog.weights import gguf_weights, parameter_count

    assert sum(_prod(t.shape) for t in g.tensors) == parameter_count(a)
    assert g.tensor_bytes == gguf_weights(a, "Q4_K_M").read_per_token_bytes


def test_the_fast_reader_agrees_with_the_gguf_package(model_path: Path):
    from gguf import GGUFReader

    ref = GGUFReader(str(model_path))  # parses the vocabulary too: ~12 s
    ours = read_gguf(model_path)
    assert [(t.name, t.tensor_type.name, tuple(int(d) for d in t.shape)) for t in ref.tensors] \
        == [(t.name, t.type_name, t.shape) for t in ours.tensors]
    assert sum(int(t.n_bytes) for t in ref.tensors) == ours.tensor_bytes


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@pytest.mark.parametrize(("engine", "context", "parallel"), [
    ("llamacpp", 4096, 1),
    ("llamacpp", 2048, 4),
    ("transformers", 1024, 1),
    ("transformers", 4096, 1),
])
def test_memory_estimate_within_15_percent_of_peak_rss(engine, context, parallel, gemmakit_home):
    # Prompts fill the context: the estimate is the worst case of a full cache and full batch.
    got = measure_rss(engine, context, parallel, threads=THREADS, home=gemmakit_home)
    print(json.dumps(got))
    assert abs(got["error"]) <= TOLERANCE, got


def _quantize(src: Path, dst: Path, ftype: int) -> None:
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.allow_requantize = True
    p.nthread = THREADS
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                          ctypes.byref(p)) == 0


@pytest.fixture(scope="module")
def requantized(model_path: Path, tmp_path_factory) -> dict[str, Path]:
    """The bundled model re-quantized by llama.cpp to Q4_0 and Q8_0."""
    import llama_cpp

    out = tmp_path_factory.mktemp("requant")
    files = {}
    for name, ftype in (("Q4_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0),
                        ("Q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0)):
        files[name] = out / f"gemma-3-270m-{name}.gguf"
        _quantize(model_path, files[name], ftype)
    return files


def test_llamacpp_type_rules_match_llama_cpp_quantizer(requantized):
    a = load_catalog().get("gemma-3-270m").architecture
    for name, path in requantized.items():
        got = {t.name: t.type_name for t in read_gguf(path).tensors}
        assert got == gguf_tensor_types(a, name), name


def test_repacked_q4_0_counts_twice(requantized, gemmakit_home):
    """llama.cpp copies Q4_0 matrices into its repack buffer on x86; the mapped originals stay
    resident, so a Q4_0 file needs more RSS than its own size suggests."""
    got = measure_rss("llamacpp", 1024, 1, threads=THREADS, home=gemmakit_home,
                      model=requantized["Q4_0"])
    print(json.dumps(got))
    assert abs(got["error"]) <= TOLERANCE, got


def test_plan_fit_plan_fits_on_the_real_engine(model_path: Path, gemmakit_home):
    from gemmakit.catalog.fit import plan_fit

    # the least budget planned as two sequences (8,448 tokens each, filled): 700 MB planned
    # 19,456 each, more than twice the prefill for the same check
    budget = 530 * 10**6
    plan = plan_fit(model_path, budget, engine="llamacpp", preferred_parallel=2)
    assert plan.memory_bytes <= budget
    got = measure_rss("llamacpp", plan.context_length, plan.parallel, threads=THREADS,
                      home=gemmakit_home)
    print(plan.summary(), json.dumps(got))
    assert got["peak_rss_bytes"] <= budget * (1 + 0.05)
    assert abs(got["error"]) <= TOLERANCE


@pytest.mark.skipif(os.environ.get("GEMMAKIT_TIMING") != "1",
                    reason="times decoding: run on a quiet machine with GEMMAKIT_TIMING=1")
def test_decode_speed_against_the_bandwidth_estimate(gemmakit_home):
    got = measure_decode("llamacpp", tokens=128, home=gemmakit_home)
    print(json.dumps(got))
    assert got["measured_tokens_per_s"] > 0
    # The estimate is a bound from memory traffic alone; report how close decoding gets.
    assert got["measured_over_estimate"] < 1.5, got
