"""The shared-KV-pool measurements of docs/batching.md, on raw llama.cpp contexts with the
llama.cpp engine's settings (bundled model, 2 threads, ubatch 512, full sliding-window cache).

    python docs/bench/kv_pool_probe.py --rounds 2 [--reference HF_DIR] [--no-speed] > out.json

- speed: a cache per sequence (8 x 4,096 cells, the engine's layout) against one unified pool
  (4 x 4,096 cells, 16 ids) holding 7 idle sequences of 1,800 cells, flash attention off and
  on: 512-token prefill, 128 tokens on one stream, 32 steps of 8 streams;
- fidelity: teacher-forced over the reference text, flash attention on against off (top-1
  agreement, mean KL), the repacked weight copies off against on (another kernel for the same
  weights, for scale), and both attention paths against a float32 transformers reference when
  --reference names the dense folder the transformers engine caches;
- swap: an idle cache saved with llama_state_seq_get_data and restored into another id; the
  logits after a whole restore, and after cutting it back to a 1,000-token prefix and
  recomputing the rest, against the logits it had.

Run it on an idle machine: llama.cpp's threads spin.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import time

import numpy as np

from gemmakit.catalog.bundled import ensure_bundled
from gemmakit.catalog.quantize import reference_text
from gemmakit.engines.llamacpp import _lib
from gemmakit.settings import Settings


class Probe:
    def __init__(self, path: str, *, repack: bool = True) -> None:
        self.ll = _lib()
        params = self.ll.llama_model_default_params()
        params.use_extra_bufts = repack  # the engine's default: repacked weight copies
        self.model = self.ll.llama_model_load_from_file(path.encode(), params)
        self.n_vocab = self.ll.llama_vocab_n_tokens(self.ll.llama_model_get_vocab(self.model))
        self.batch = self.ll.llama_batch_init(512, 0, 1)

    def context(self, *, unified: bool, flash: bool, n_ctx: int, n_seq: int):
        ll = self.ll
        p = ll.llama_context_default_params()
        p.swa_full, p.n_ctx, p.n_seq_max, p.kv_unified = True, n_ctx, n_seq, unified
        p.n_batch = p.n_ubatch = 512
        p.n_threads = p.n_threads_batch = 2
        p.flash_attn_type = (ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash
                             else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        return ll.llama_init_from_model(self.model, p)

    def decode(self, ctx, items: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        b.n_tokens = len(items)
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        rc = self.ll.llama_decode(ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def prefill(self, ctx, seq: int, tokens: list[int], start: int = 0, all_logits=False):
        for b in range(0, len(tokens), 512):
            part = tokens[b:b + 512]
            self.decode(ctx, [(t, start + b + i, seq, all_logits or i == len(part) - 1)
                              for i, t in enumerate(part)])

    def logits(self, ctx, i: int) -> np.ndarray:
        return np.ctypeslib.as_array(self.ll.llama_get_logits_ith(ctx, i),
                                     shape=(self.n_vocab,)).copy()


def _tokens(n: int, seed: int) -> list[int]:
    return [300 + (seed * 7919 + 31 * i) % 5000 for i in range(n)]


def speed(p: Probe, layout: str, flash: bool) -> dict[str, float]:
    unified = layout == "pool"
    ctx = p.context(unified=unified, flash=flash, n_ctx=4 * 4096 if unified else 8 * 4096,
                    n_seq=16 if unified else 8)
    try:
        if unified:
            for s in range(1, 8):  # the idle prefix caches a pool keeps
                p.prefill(ctx, s, _tokens(1800, s))
        t = time.perf_counter()
        p.prefill(ctx, 0, _tokens(512, 99))
        prefill = 512 / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(128):
            p.decode(ctx, [(500 + i, 512 + i, 0, True)])
        one = 128 / (time.perf_counter() - t)
        if unified:
            seqs = list(range(8, 16))
        else:
            p.ll.llama_memory_clear(p.ll.llama_get_memory(ctx), True)
            seqs = list(range(8))
        for s in seqs:
            p.prefill(ctx, s, _tokens(300, 100 + s))
        t = time.perf_counter()
        for i in range(32):
            p.decode(ctx, [(600 + i, 300 + i, s, True) for s in seqs])
        eight = 32 * 8 / (time.perf_counter() - t)
    finally:
        p.ll.llama_free(ctx)
    return {"prefill_512_tok_s": round(prefill, 1), "one_stream_tok_s": round(one, 1),
            "eight_streams_tok_s": round(eight, 1)}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _compare(ref: np.ndarray, other: np.ndarray) -> dict[str, float]:
    kl = (np.exp(ref) * (ref - other)).sum(axis=1)
    return {"top1_agreement": round(float((ref.argmax(1) == other.argmax(1)).mean()), 4),
            "mean_kl": round(float(kl.mean()), 5)}


def _teacher_forced(p: Probe, tokens: list[int], flash: bool) -> np.ndarray:
    ctx = p.context(unified=False, flash=flash, n_ctx=4096, n_seq=1)
    p.prefill(ctx, 0, tokens, all_logits=True)
    out = np.stack([p.logits(ctx, i) for i in range(len(tokens))]).astype(np.float64)
    p.ll.llama_free(ctx)
    return _log_softmax(out)


def fidelity(p: Probe, path: str, reference: str | None) -> dict[str, object]:
    ll = p.ll
    text = reference_text().encode()
    vocab = ll.llama_model_get_vocab(p.model)
    buf = (ll.llama_token * 4096)()
    n = ll.llama_tokenize(vocab, text, len(text), buf, 4096, True, False)
    if n < 0:  # the buffer was too small: never score a cut text
        raise SystemExit(f"the reference text is {-n} tokens, more than the probe's 4096")
    tokens = list(buf[:n])
    out = {flash: _teacher_forced(p, tokens, flash) for flash in (False, True)}
    plain = Probe(path, repack=False)
    unpacked = _teacher_forced(plain, tokens, False)
    ll.llama_model_free(plain.model)
    result: dict[str, object] = {"tokens": n, "flash_on_vs_off": _compare(out[False], out[True]),
                                 "repack_off_vs_on": _compare(out[False], unpacked)}
    if reference:
        import torch
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(reference, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            ref = _log_softmax(hf(torch.tensor([tokens])).logits[0].double().numpy())
        result["against_float32_reference"] = {"flash_off": _compare(ref, out[False]),
                                               "flash_on": _compare(ref, out[True])}
    return result


def swap(p: Probe) -> dict[str, float]:
    ll = p.ll
    ctx = p.context(unified=True, flash=False, n_ctx=4 * 4096, n_seq=16)
    mem = ll.llama_get_memory(ctx)
    try:
        tokens = _tokens(1800, 1)
        p.prefill(ctx, 1, tokens)
        p.decode(ctx, [(1234, 1800, 1, True)])
        want = p.logits(ctx, 0)
        ll.llama_memory_seq_rm(mem, 1, 1800, -1)
        t = time.perf_counter()
        size = ll.llama_state_seq_get_size(ctx, 1)
        state = (ctypes.c_uint8 * size)()
        ll.llama_state_seq_get_data(ctx, state, size, 1)
        saved = time.perf_counter() - t
        ll.llama_memory_seq_rm(mem, 1, -1, -1)
        p.prefill(ctx, 2, _tokens(300, 2))  # other work in the pool meanwhile
        t = time.perf_counter()
        if ll.llama_state_seq_set_data(ctx, state, size, 7) != size:
            raise RuntimeError("llama_state_seq_set_data failed")
        restored = time.perf_counter() - t
        p.decode(ctx, [(1234, 1800, 7, True)])
        whole = float(np.abs(p.logits(ctx, 0) - want).max())
        ll.llama_memory_seq_rm(mem, 7, 1000, -1)  # a request sharing the first 1,000 tokens
        p.prefill(ctx, 7, tokens[1000:], start=1000)
        p.decode(ctx, [(1234, 1800, 7, True)])
        cut = float(np.abs(p.logits(ctx, 0) - want).max())
    finally:
        ll.llama_free(ctx)
    return {"state_bytes": size, "save_ms": round(saved * 1e3, 1),
            "restore_ms": round(restored * 1e3, 1),
            "max_logit_diff_whole_restore": round(whole, 4),
            "max_logit_diff_cut_to_prefix": round(cut, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reference", help="dense folder for the float32 reference (optional)")
    ap.add_argument("--no-speed", action="store_true", help="fidelity and swap only")
    args = ap.parse_args()
    path = str(ensure_bundled(Settings().models_dir))
    p = Probe(path)
    runs: dict[str, list[dict[str, float]]] = {}
    # Rounds taking turns, so drift hits every layout alike.
    for _ in range(0 if args.no_speed else args.rounds):
        for layout, flash in (("per_sequence", False), ("per_sequence", True), ("pool", False),
                              ("pool", True)):
            key = f"{layout}{'_flash' if flash else ''}"
            runs.setdefault(key, []).append(speed(p, layout, flash))
    print(json.dumps({"speed": runs, "fidelity": fidelity(p, path, args.reference),
                      "swap": swap(p)}, indent=2))


if __name__ == "__main__":
    main()
