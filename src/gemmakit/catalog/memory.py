"""Memory of a model served by one of gemmakit's engines, computed:

    weights (per tensor, at the file's or the profile's types; weights.py)
  + KV cache at the context and number of parallel sequences, each layer as the engine
    allocates it (sliding-window layers counted as such)
  + scratch (llama.cpp: the attention scores of a full batch over the whole context;
    transformers: the activations of prefilling the whole prompt in one forward)
  + runtime overhead, measured once per engine (data/measured.json, with its command).

What each engine allocates is a fact about the engine, kept in data/gemma.toml [engines]:
gemmakit's llama.cpp engine keeps the window plus one micro-batch on sliding layers (swa_full
off), one stream of cells per sequence (kv_unified off), f16 cells, padded to 256; the
transformers engine keeps only the window on sliding layers and runs one sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gemmakit.catalog.data import Architecture, Catalog, Model
from gemmakit.catalog.weights import (
    DTYPE_BYTES,
    Weights,
    gguf_weights,
    hf_weights,
    raw_weights,
    split_quantization,
    type_size,
)
from gemmakit.errors import ConfigError

F32 = 4  # bytes: attention scores and activations are float32 on CPU


def _pad(n: int, block: int) -> int:
    return -(-n // block) * block


@dataclass(frozen=True)
class MemoryEstimate:
    engine: str
    quantization: str
    context: int
    """Tokens of KV cache per sequence (as the engine rounds it)."""
    parallel: int
    weights_bytes: int
    kv_cache_bytes: int
    scratch_bytes: int
    overhead_bytes: int
    weights: Weights
    notes: tuple[str, ...] = field(default=())

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.scratch_bytes + self.overhead_bytes

    def breakdown(self) -> dict[str, int]:
        return {"weights": self.weights_bytes, "kv_cache": self.kv_cache_bytes,
                "scratch": self.scratch_bytes, "overhead": self.overhead_bytes}


# --- KV cache -------------------------------------------------------------------------------
def llamacpp_kv_cells(arch: Architecture, facts: dict[str, Any], context: int) -> list[int]:
    """Cells per sequence for each layer with its own cache. A sliding layer holds the window
    plus one micro-batch (rounded to 256) unless swa_full keeps the whole context there."""
    block = int(facts["kv_cell_block"])
    cells = _pad(context, block)
    ubatch = int(facts["ubatch"])
    out = []
    for kind in arch.kv_layer_kinds():
        if kind == "L" and not facts["swa_full"] and arch.sliding_window:
            out.append(min(cells, _pad(arch.sliding_window + ubatch, block)))
        else:
            out.append(cells)
    return out


def llamacpp_kv_bytes(arch: Architecture, facts: dict[str, Any], context: int,
                      parallel: int) -> int:
    """Every sequence has its own cells (kv_unified off): parallel x per-sequence cells."""
    block, size = type_size(facts["kv_cache_type"])
    per_token = arch.kv_bytes_per_token(size / block)
    return int(parallel * sum(llamacpp_kv_cells(arch, facts, context)) * per_token)


def transformers_kv_bytes(arch: Architecture, facts: dict[str, Any], context: int,
                          element_bytes: float) -> int:
    """One sequence; transformers' sliding layers keep window - 1 positions (the current token
    is the window's last)."""
    total = 0.0
    for kind in arch.kv_layer_kinds():
        span = context
        if kind == "L" and facts["sliding_window_cache"] and arch.sliding_window:
            span = min(context, arch.sliding_window - 1)
        total += span * arch.kv_bytes_per_token(element_bytes)
    return int(total)


# --- scratch ----------------------------------------------------------------------------------
def llamacpp_scratch_bytes(arch: Architecture, facts: dict[str, Any], context: int) -> int:
    """Without flash attention llama.cpp materialises, for a full batch of `ubatch` tokens, the
    f32 scores of every head against every cached position (KQ, then its softmax) and the mask:
    (2 x heads + 1) x ubatch x cells x 4 bytes when a prompt fills the context (measured within
    3 % up to 16k tokens). It lives in the compute buffer, reserved once for the worst batch,
    whose size is at least the logits of a full batch (vocabulary x ubatch x 4): past that the
    scores reuse the logits' space, of which only the sampled rows are ever written, so the
    scratch is bounded by the larger of that and the one-copy scores ((heads + 1) x ...)."""
    if facts.get("flash_attention"):
        return 0
    block = int(facts["kv_cell_block"])
    cells = _pad(context, block)
    ubatch = min(int(facts["ubatch"]), cells)
    scores = ubatch * cells * F32
    both = (2 * arch.attention_heads + 1) * scores
    bound = max(arch.vocab_size * ubatch * F32, (arch.attention_heads + 1) * scores)
    return int(min(both, bound))


def transformers_scratch_bytes(arch: Architecture, context: int,
                               measured: dict[str, Any]) -> int:
    """The transformers engine prefills the whole prompt in one forward: its activations grow
    with the prompt. Measured per prompt token and per unit of layer width (hidden +
    intermediate) on the bundled model; scaled by width for other models."""
    coeff = float(measured.get("prefill_bytes_per_token_per_width", 0.0))
    return int(coeff * context * (arch.hidden_size + arch.intermediate_size))


def overhead_bytes(measured: dict[str, Any], parallel: int) -> int:
    return int(measured.get("fixed_bytes", 0) + measured.get("per_sequence_bytes", 0) * parallel)


# --- the estimate ----------------------------------------------------------------------------
def model_weights(model: Model, catalog: Catalog, engine: str, quantization: str) -> Weights:
    """Weights of `model` on `engine` at `quantization` (a GGUF file type, QAT_Q4_0, or a
    transformers dtype label such as BF16 or INT8/BF16)."""
    arch = model.architecture
    if engine == "llamacpp":
        if model.raw_parameters is not None or arch is None:
            raise ConfigError(f"{model.id}: its GGUF tensors are not in the catalog (only its "
                              "raw parameter count is), so its GGUF weights cannot be computed")
        facts = catalog.engine("llamacpp")
        recipe = catalog.quantizations.get(quantization)
        return gguf_weights(arch, quantization, recipe=recipe,
                            repack_types=tuple(facts.get("repack_types", ())))
    if engine == "transformers":
        if model.raw_parameters is not None:
            linear, dtype = split_quantization(quantization)
            if linear is not None:
                raise ConfigError(f"{model.id}: which of its parameters are linear layers is "
                                  "not in the catalog; only unquantized dtypes are computed")
            return raw_weights(model.raw_parameters, model.effective_parameters, dtype)
        if arch is None:
            raise ConfigError(f"{model.id} has no architecture in the catalog")
        vision = "image" in model.modalities
        return hf_weights(arch, quantization, vision=vision)
    raise ConfigError(f"no memory model for the {engine} engine")


def kv_element_bytes(engine: str, catalog: Catalog, quantization: str) -> float:
    """llama.cpp: its cache type; transformers: the model's dtype (the non-quantized part's
    under a weight-only quantization)."""
    if engine == "llamacpp":
        block, size = type_size(catalog.engine("llamacpp")["kv_cache_type"])
        return size / block
    _, dtype = split_quantization(quantization)
    return DTYPE_BYTES.get(dtype, 4.0)


def estimate(model: Model, catalog: Catalog, *, engine: str, quantization: str, context: int,
             parallel: int = 1, device: str = "cpu") -> MemoryEstimate:
    """Memory of catalog `model` served by `engine` with `parallel` sequences of `context`
    tokens."""
    if model.architecture is None:
        raise ConfigError(f"{model.id} has no architecture in the catalog")
    weights = model_weights(model, catalog, engine, quantization)
    return estimate_for(model.architecture, weights, catalog, engine=engine,
                        quantization=quantization, context=context, parallel=parallel,
                        device=device)


def estimate_for(arch: Architecture, weights: Weights, catalog: Catalog, *, engine: str,
                 quantization: str, context: int, parallel: int = 1,
                 device: str = "cpu") -> MemoryEstimate:
    """The estimate from an architecture and its weights (a catalog model's, or a local file's
    own: catalog/local.py). On `device` "cuda" it is GPU memory: the overhead, measured on CPU as
    process memory, is left out (the CUDA runtime's own is not measured)."""
    facts = catalog.engine(engine)
    measured = catalog.measured.get(engine, {})
    notes: list[str] = []
    if device.startswith("cuda"):
        measured = {k: v for k, v in measured.items() if k.startswith("prefill")}
        notes.append("GPU memory: weights, cache and activations; the CUDA runtime's own "
                     "memory is not measured")
    elif not measured:
        notes.append(f"no measured runtime overhead for the {engine} engine")
    if engine == "llamacpp":
        ctx = _pad(context, int(facts["kv_cell_block"]))
        kv = llamacpp_kv_bytes(arch, facts, context, parallel)
        scratch = llamacpp_scratch_bytes(arch, facts, context)
        if facts["swa_full"]:
            notes.append("sliding-window layers hold the whole context (swa_full)")
    else:
        ctx = context
        if parallel > int(facts.get("sequences", 1)):
            notes.append("the transformers engine runs one sequence at a time")
        kv = transformers_kv_bytes(arch, facts, context,
                                   kv_element_bytes(engine, catalog, quantization))
        scratch = transformers_scratch_bytes(arch, context, measured)
        parallel = 1
    return MemoryEstimate(engine, quantization, ctx, parallel, weights.total_bytes, kv, scratch,
                          overhead_bytes(measured, parallel), weights, tuple(notes))
