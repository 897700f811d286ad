"""One training step (forward + backward, LoRA r 16 on all projections) of 3 capitals examples:
the output layer at every position vs only at the target rows (train.batch_loss). Prints the
best of 2 per variant, twice each, and both losses (equal). LONG=1 pads each prompt to ~270
tokens.

    [LONG=1] python -m tests.integration.finetune.measure_gather
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "data" / "finetune" / "capitals.jsonl"


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from gemmakit.catalog.bundled import ensure_bundled
    from gemmakit.finetune.data import Encoder, Example, load
    from gemmakit.finetune.train import DEFAULT_TARGETS, batch_loss, collate, hf_tokenize
    from gemmakit.hf import loading
    from gemmakit.hf.checkpoint import dense_from_gguf
    from gemmakit.settings import default_home

    torch.set_num_threads(2)
    home = default_home()
    folder = dense_from_gguf(ensure_bundled(home / "models"), home)
    ds = load(DATA, Encoder(hf_tokenize(AutoTokenizer.from_pretrained(folder))), max_seq_len=512)
    m = get_peft_model(loading.load(folder, dtype=torch.float32).model,
                       LoraConfig(r=16, lora_alpha=32, target_modules=list(DEFAULT_TARGETS)))
    m.train()
    ex = ds.examples[:3]
    if os.environ.get("LONG"):
        ex = [Example(0, e.ids[:3] + [e.ids[3]] * 240 + e.ids[3:], [0] * 243 + e.mask[3:])
              for e in ex]
    ids, attn, targets = collate(ex, 0)

    def full() -> Any:
        logits = m(input_ids=ids, attention_mask=attn).logits.float()  # (B, T, V)
        return torch.nn.functional.cross_entropy(logits[:, :-1][targets[:, :-1]],
                                                 ids[:, 1:][targets[:, :-1]])

    def gathered() -> Any:
        return batch_loss(m, ids, attn, targets)[0]

    out: dict[str, Any] = {"tokens": int(attn.sum()), "targets": int(targets.sum())}
    for name, fn in (("full_logits", full), ("gathered", gathered)) * 2:
        best = 1e9
        for _ in range(2):
            t0 = time.perf_counter()
            loss = fn()
            loss.backward()
            m.zero_grad()
            best = min(best, time.perf_counter() - t0)
        out.setdefault(f"{name}_s", []).append(round(best, 2))
        out[f"{name}_loss"] = round(loss.item(), 5)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
