"""Scoring's output layer with another table format, measured (docs/batching.md, "Scoring and
constrained tokens"): the bundled GGUF rewritten with an untied `output.weight` (the tied
Q8_0 `token_embd.weight` dequantized, written as F16 or as the same Q8_0 blocks), then one
512-token prompt decoded with logits at the last row only (plain prefill) and at every row
(scoring), and 64 decoded tokens, for the bundled file and the variant, in one process.

    python docs/bench/output_table_probe.py --format f16 --out /tmp/variant.gguf > out.json

Run it on an idle machine: llama.cpp's threads spin.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gguf
import numpy as np

from gemmakit.catalog.bundled import ensure_bundled
from gemmakit.catalog.quantize import reference_text
from gemmakit.settings import Settings


def write_variant(src: Path, dst: Path, fmt: str) -> None:
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        sub = field.types[1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    table = None
    for t in reader.tensors:
        plain = t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
        writer.add_tensor(t.name, t.data, raw_shape=t.data.shape if plain else None,
                          raw_dtype=t.tensor_type)
        if t.name == "token_embd.weight":
            table = t
    if table is None or "output.weight" in {t.name for t in reader.tensors}:
        raise SystemExit("expected a tied token_embd.weight and no output.weight")
    if fmt == "f16":
        writer.add_tensor("output.weight",
                          gguf.quants.dequantize(table.data, table.tensor_type).astype(np.float16))
    else:  # the same blocks, untied
        writer.add_tensor("output.weight", table.data, raw_dtype=table.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def measure(path: Path, rounds: int) -> dict[str, float]:
    from llama_cpp import Llama

    out: dict[str, float] = {}
    text = reference_text() * 4
    for scoring in (False, True):
        m = Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_ubatch=512,
                  logits_all=scoring, verbose=False, n_threads=2, n_threads_batch=2)
        tokens = m.tokenize(text.encode())[:512]
        times = []
        for _ in range(rounds + 1):  # the first is a warm-up
            m.reset()
            t = time.perf_counter()
            m.eval(tokens)
            times.append(time.perf_counter() - t)
        out["scored_s" if scoring else "plain_s"] = round(min(times[1:]), 3)
        if not scoring:
            m.reset()
            m.eval(tokens[:32])
            t = time.perf_counter()
            for tok in tokens[32:96]:
                m.eval([tok])
            out["decode_tok_s"] = round(64 / (time.perf_counter() - t), 1)
        m.close()
    out["ratio"] = round(out["scored_s"] / out["plain_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--format", choices=["f16", "q8_0"], default="f16")
    ap.add_argument("--out", type=Path, required=True, help="where the variant GGUF goes")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    bundled = ensure_bundled(Settings().models_dir)
    write_variant(bundled, args.out, args.format)
    print(json.dumps({"bundled": measure(bundled, args.rounds),
                      f"untied_{args.format}_output": measure(args.out, args.rounds)}, indent=2))


if __name__ == "__main__":
    main()
