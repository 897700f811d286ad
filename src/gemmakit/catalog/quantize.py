"""`gemmakit quantize MODEL --type T -o OUT.gguf`: llama.cpp's own quantizer (through
llama-cpp-python's `llama_model_quantize`), then a fidelity report of the result against its
source on a fixed reference text (catalog/data/reference.txt, about 320 tokens):

- teacher-forced top-1 agreement: the share of positions where both models' most likely next
  token is the same, each reading the reference text itself (not its own outputs);
- mean KL divergence KL(source || quantized) of the next-token distributions, in nats;
- the perplexity of the reference text under each model.

Both models are scored with llama.cpp at every position (`logits_all`), one after the other:
the source's log-probabilities (positions x vocabulary, float32: ~330 MB for Gemma 3's 262k
vocabulary) are kept while the quantized model is scored.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gemmakit.errors import ConfigError

# GGUF file types that hold unquantized weights; anything else is already quantized.
UNQUANTIZED = ("F32", "F16", "BF16", "ALL_F32")
_ROWS = 32  # positions per block when comparing distributions (bounds the temporaries)


def _llama_cpp() -> Any:
    from gemmakit.engines.llamacpp import _lib

    return _lib()  # llama.cpp's log routed into Python logging; a clear error if missing


def quant_types() -> dict[str, int]:
    """llama.cpp's file types by name (Q8_0, Q4_K_M, ...) -> LLAMA_FTYPE_* value."""
    llama_cpp = _llama_cpp()

    prefix = "LLAMA_FTYPE_MOSTLY_"
    return {n.removeprefix(prefix): int(getattr(llama_cpp, n)) for n in dir(llama_cpp)
            if n.startswith(prefix)}


def reference_text() -> str:
    return (resources.files("gemmakit.catalog") / "data" / "reference.txt").read_text("utf-8")


@dataclass(frozen=True)
class Fidelity:
    tokens: int
    """Positions scored: the reference's tokens after BOS, each predicted from those before."""
    top1_agreement: float
    mean_kl: float
    perplexity_source: float
    perplexity_quantized: float


@dataclass(frozen=True)
class QuantizeReport:
    source: str
    source_type: str
    output: str
    type: str
    requantized: bool
    source_bytes: int
    output_bytes: int
    quantize_seconds: float
    fidelity: Fidelity

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("fidelity"))  # the report's fields at the top level
        return d


def check_type(qtype: str) -> int:
    types = quant_types()
    if qtype.upper() not in types:
        raise ConfigError(f"unknown --type '{qtype}': llama.cpp quantizes to "
                          + ", ".join(sorted(types)))
    return types[qtype.upper()]


def quantize(source: Path, output: Path, qtype: str, *, allow_requantize: bool = False,
             threads: int | None = None) -> tuple[str, bool, float]:
    """Quantize `source` (a GGUF) to `output` with llama.cpp; (source type, requantized,
    seconds). An already-quantized source is refused without `allow_requantize`."""
    llama_cpp = _llama_cpp()

    from gemmakit.engines.llamacpp import _file_type_of

    ftype = check_type(qtype)
    src_type = (_file_type_of(source) or "unknown").upper()
    requant = src_type not in UNQUANTIZED
    if requant and not allow_requantize:
        raise ConfigError(f"{source.name} is already quantized ({src_type}): quantizing it "
                          f"again compounds the error of both quantizations. Quantize from an "
                          f"F16/BF16/F32 GGUF, or pass --allow-requantize to do it anyway")
    if requant:
        print(f"gemmakit: warning: requantizing {src_type} to {qtype.upper()}: the error of "
              f"both quantizations compounds (the report compares against the {src_type} "
              "source, not the original weights)", file=sys.stderr)
    if output.exists():
        raise ConfigError(f"{output} exists; remove it or choose another -o")
    if output.resolve() == source.resolve():
        raise ConfigError("-o must name a new file, not the source")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.part")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = requant
    params.nthread = threads or os.cpu_count() or 1
    t0 = time.perf_counter()
    try:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise ConfigError(f"llama.cpp could not quantize {source.name} to {qtype.upper()} "
                              f"(llama_model_quantize returned {rc}; its log says why)")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return src_type, requant, time.perf_counter() - t0


def _log_softmax_rows(logits: Any) -> Any:
    """log softmax over the vocabulary, row by row, in float64 for the sums."""
    import numpy as np

    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


def _score(path: Path, tokens: list[int], threads: int | None) -> Any:
    """Next-token log-probabilities at every position of `tokens`: (len-1, vocab) float32."""
    import numpy as np

    llama_cpp = _llama_cpp()

    n_ctx = ((len(tokens) + 255) // 256) * 256
    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                          logits_all=True, verbose=False, n_threads=threads,
                          n_threads_batch=threads)
    try:
        llm.eval(tokens)
        logits = np.asarray(llm.scores[: len(tokens) - 1], dtype=np.float32)
        out = np.empty_like(logits)
        for i in range(0, len(logits), _ROWS):
            out[i:i + _ROWS] = _log_softmax_rows(logits[i:i + _ROWS])
        return out
    finally:
        llm.close()


def fidelity(source: Path, quantized: Path, *, text: str | None = None,
             threads: int | None = None) -> Fidelity:
    """Teacher-forced comparison of `quantized` against `source` on `text` (default: the
    shipped reference text)."""
    import numpy as np

    llama_cpp = _llama_cpp()

    text = text if text is not None else reference_text()
    vocab = llama_cpp.Llama(str(source), vocab_only=True, verbose=False)
    tokens = vocab.tokenize(text.encode("utf-8"), add_bos=True)
    vocab.close()
    if len(tokens) < 3:
        raise ConfigError("the reference text is too short to score")
    targets = np.asarray(tokens[1:])
    src = _score(source, tokens, threads)
    q = _score(quantized, tokens, threads)
    if src.shape != q.shape:
        raise ConfigError(f"{quantized.name} has another vocabulary than {source.name}")
    rows = np.arange(len(targets))
    kl = 0.0
    for i in range(0, len(src), _ROWS):
        s, t = src[i:i + _ROWS].astype(np.float64), q[i:i + _ROWS].astype(np.float64)
        kl += float((np.exp(s) * (s - t)).sum())
    agree = float((src.argmax(axis=1) == q.argmax(axis=1)).mean())
    return Fidelity(
        tokens=len(targets), top1_agreement=agree, mean_kl=max(0.0, kl / len(targets)),
        perplexity_source=math.exp(-float(src[rows, targets].mean())),
        perplexity_quantized=math.exp(-float(q[rows, targets].mean())))


def quantize_with_report(source: Path, output: Path, qtype: str, *,
                         allow_requantize: bool = False,
                         threads: int | None = None) -> QuantizeReport:
    src_type, requant, seconds = quantize(source, output, qtype,
                                          allow_requantize=allow_requantize, threads=threads)
    fid = fidelity(source, output, threads=threads)
    return QuantizeReport(str(source), src_type, str(output), qtype.upper(), requant,
                          source.stat().st_size, output.stat().st_size, round(seconds, 2), fid)
