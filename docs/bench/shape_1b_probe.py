"""A GGUF of Gemma 3 1B's shapes with random weights, for timing only: what a pass costs depends
on the shapes, not on the values (docs/batching.md, "Scoring and constrained tokens").

Hidden size 1152, 26 layers, feed-forward 6912, 4 query heads of 256, 1 KV head, the 262,144-token
vocabulary; metadata and tokenizer are the bundled 270M's (the same Gemma 3 family keys), every
matrix drawn from N(0, 0.02) in F16, every norm weight 1. Quantize it with llama.cpp's quantizer as
a Q4_K_M file of that size would be:

    python docs/bench/shape_1b_probe.py /tmp/shape1b-f16.gguf
    gemmakit quantize /tmp/shape1b-f16.gguf --type Q4_K_M -o /tmp/shape1b-q4km.gguf
    gemmakit bench --scoring --prompt-tokens 512 --repeats 3 --model /tmp/shape1b-q4km.gguf
"""
from __future__ import annotations

import sys

import gguf
import numpy as np

from gemmakit.catalog.bundled import ensure_bundled
from gemmakit.settings import Settings

SHAPE = {"gemma3.embedding_length": 1152, "gemma3.block_count": 26,
         "gemma3.feed_forward_length": 6912}
DIMS = {640: 1152, 2048: 6912}  # the 270M's hidden and feed-forward sizes -> the 1B's


def main(out: str) -> None:
    src = gguf.GGUFReader(str(ensure_bundled(Settings().models_dir)))
    w = gguf.GGUFWriter(out, "gemma3")
    for name, f in src.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        kind = f.types[0]
        sub = f.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, SHAPE.get(name, f.contents()), kind, sub_type=sub)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    rng = np.random.default_rng(0)

    def add(name: str, shape: list[int]) -> None:
        if len(shape) == 1:
            w.add_tensor(name, np.ones(shape[0], dtype=np.float32))
        else:  # GGUF shapes are (columns, rows)
            a = rng.standard_normal((shape[1], shape[0]), dtype=np.float32) * 0.02
            w.add_tensor(name, a.astype(np.float16))

    block = [t for t in src.tensors if t.name.startswith("blk.0.")]
    for t in src.tensors:
        if not t.name.startswith("blk."):
            add(t.name, [DIMS.get(int(x), int(x)) for x in t.shape])
    for b in range(SHAPE["gemma3.block_count"]):
        for t in block:
            add(t.name.replace("blk.0.", f"blk.{b}."), [DIMS.get(int(x), int(x)) for x in t.shape])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(sys.argv[1])
