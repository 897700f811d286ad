"""Teacher-forced fidelity of the sliding-window cache layout (docs/batching.md, "Sixteen sequences
by default"): llama.cpp as the 4-sequence default ran it (swa_full, micro-batch 512) and as it runs
now (window + micro-batch 256), each against the float32 transformers reference on the dense folder
of the bundled weights, over 1,800 tokens of the repository's own prose. Top-1 agreement and mean
KL at every position, past position 768, and at the "clear" positions, where the reference gives
its top token a probability of at least 0.5. The prose is read as it stands; the figures in
docs/bench/window-fidelity-2core-amd.json were taken at the commit that added this probe.

    python docs/bench/window_fidelity_probe.py > out.json
"""
from __future__ import annotations

import json
from pathlib import Path

import llama_cpp
import numpy as np
import torch
from transformers import AutoModelForCausalLM

from gemmakit.catalog.bundled import ensure_bundled
from gemmakit.catalog.quantize import _log_softmax_rows as lsm
from gemmakit.hf.checkpoint import dense_from_gguf
from gemmakit.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TOKENS = 1800
ROWS = 150  # rows of the float64 log-softmax at a time


def llama_logits(path: Path, toks: list[int], *, swa_full: bool, ubatch: int) -> np.ndarray:
    m = llama_cpp.Llama(str(path), n_ctx=2048, n_batch=512, n_ubatch=ubatch, swa_full=swa_full,
                        logits_all=True, verbose=False, n_threads=2, n_threads_batch=2)
    m.eval(toks)
    out = np.asarray(m.scores[:len(toks)], dtype=np.float32).copy()
    m.close()
    return out


def main() -> None:
    s = Settings()
    path = ensure_bundled(s.models_dir)
    text = "".join((ROOT / p).read_text() for p in
                   ("README.md", "docs/architecture.md", "docs/batching.md"))
    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    toks = vocab.tokenize(text.encode(), add_bos=True)[:TOKENS]
    vocab.close()
    before = llama_logits(path, toks, swa_full=True, ubatch=512)
    now = llama_logits(path, toks, swa_full=False, ubatch=256)
    ref = AutoModelForCausalLM.from_pretrained(dense_from_gguf(path, s.home), dtype=torch.float32,
                                               attn_implementation="eager").eval()
    with torch.no_grad():
        reference = ref(torch.tensor([toks])).logits[0].float().numpy()
    del ref
    pairs = {"before_vs_reference": (before, reference), "now_vs_reference": (now, reference),
             "now_vs_before": (now, before)}
    agree: dict[str, list[np.ndarray]] = {k: [] for k in pairs}
    kls: dict[str, list[np.ndarray]] = {k: [] for k in pairs}
    clear_rows = []
    for i in range(0, len(toks), ROWS):
        clear_rows.append(np.exp(lsm(reference[i:i + ROWS])).max(1) >= 0.5)
        for k, (x, y) in pairs.items():
            lx, ly = lsm(x[i:i + ROWS]), lsm(y[i:i + ROWS])
            agree[k].append(lx.argmax(1) == ly.argmax(1))
            kls[k].append((np.exp(ly) * (ly - lx)).sum(1))
    clear = np.concatenate(clear_rows)
    late = np.arange(len(toks)) >= 768
    res: dict[str, object] = {"tokens": len(toks), "clear_positions_p_ge_0.5": int(clear.sum())}
    for k in pairs:
        ag, kl = np.concatenate(agree[k]), np.concatenate(kls[k])
        res[k] = {"top1_all": round(float(ag.mean()) * 100, 2),
                  "top1_late": round(float(ag[late].mean()) * 100, 2),
                  "top1_clear": round(float(ag[clear].mean()) * 100, 2),
                  "top1_clear_late": round(float(ag[clear & late].mean()) * 100, 2),
                  "kl_all": round(float(kl.mean()), 5), "kl_clear": round(float(kl[clear].mean()), 5)}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
