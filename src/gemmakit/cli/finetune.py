"""`gemmakit finetune DATA.jsonl --name NAME`: LoRA training on the server's own Gemma renderer
into the adapter store (gemmakit.finetune)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gemmakit.cli.common import load_settings, settings_flags

HELP = "Fine-tune a LoRA adapter on JSONL data (chat, prompt/completion or text lines)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gemmakit.finetune.train import DEFAULT_TARGETS

    p.add_argument("data", metavar="DATA.jsonl", type=Path, help="Training data: one JSON object "
                   "a line, {\"messages\": [...], \"tools\": [...]}, {\"prompt\", \"completion\"} "
                   "or {\"text\"} (the format is told from the keys; one format per file).")
    p.add_argument("--name", required=True, help="The adapter's name in the store "
                   "($GEMMAKIT_HOME/adapters/NAME); the name requests use as their model.")
    p.add_argument("--model", default="gemma-3-270m", help="The base model (default: the "
                   "bundled gemma-3-270m); a GGUF is trained on its dense conversion.")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--max-steps", type=int, help="Optimizer steps to run.")
    steps.add_argument("--epochs", type=float, help="Passes over the data (default 1; may be "
                       "fractional).")
    p.add_argument("--lora-rank", type=int, default=16, help="LoRA rank r (default 16).")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha; the update is "
                   "scaled by alpha / r (default 32).")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="Dropout on LoRA's input "
                   "(default 0).")
    p.add_argument("--lora-targets", default=",".join(DEFAULT_TARGETS), help="Comma-separated "
                   "module names LoRA adapts (default: every attention and MLP projection).")
    p.add_argument("--learning-rate", type=float, default=2e-4, help="Peak learning rate "
                   "(AdamW; linear warm-up over 5%% of the steps, then linear decay; "
                   "default 2e-4).")
    p.add_argument("--batch-size", type=int, default=4, help="Examples per step (default 4).")
    p.add_argument("--max-seq-len", type=int, default=1024, help="Longest example in tokens "
                   "(default 1024); a longer one is an error unless --skip-long.")
    p.add_argument("--skip-long", action="store_true", help="Leave out examples longer than "
                   "--max-seq-len (the count is reported) instead of failing.")
    ev = p.add_mutually_exclusive_group()
    ev.add_argument("--eval", type=Path, metavar="DATA.jsonl", dest="eval_data",
                    help="Held-out data for the eval loss (before, every --eval-every steps, at "
                    "the end).")
    ev.add_argument("--eval-split", type=float, metavar="FRACTION", help="Hold out this "
                    "fraction of DATA for the eval loss instead.")
    p.add_argument("--eval-every", type=int, help="Steps between eval losses (default: a fifth "
                   "of the run).")
    p.add_argument("--save-every", type=int, help="Steps between checkpoints (default: as "
                   "--eval-every).")
    p.add_argument("--resume", action="store_true", help="Continue the interrupted run of NAME "
                   "from its last checkpoint (same data and settings), ending as an "
                   "uninterrupted run would.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the LoRA initialisation and the "
                   "data order (default 0).")
    p.add_argument("--json", action="store_true", help="Print the final report as JSON.")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")
    settings_flags(p, ("home", "log_level", "threads"))


def run(ns: argparse.Namespace) -> int:
    from gemmakit.finetune.train import TrainConfig, train

    settings = load_settings(ns)
    cfg = TrainConfig(
        name=ns.name, data=ns.data.expanduser(), model=ns.model, max_steps=ns.max_steps,
        epochs=ns.epochs, lora_rank=ns.lora_rank, lora_alpha=ns.lora_alpha,
        lora_dropout=ns.lora_dropout, learning_rate=ns.learning_rate, batch_size=ns.batch_size,
        max_seq_len=ns.max_seq_len,
        eval_data=ns.eval_data.expanduser() if ns.eval_data else None,
        eval_split=ns.eval_split, eval_every=ns.eval_every, save_every=ns.save_every,
        targets=tuple(t.strip() for t in ns.lora_targets.split(",") if t.strip()),
        seed=ns.seed, skip_long=ns.skip_long)
    report = train(cfg, settings.home, resume=ns.resume, threads=settings.threads,
                   progress=not ns.no_progress)
    if ns.json:
        print(json.dumps(report, indent=2))
        return 0
    before, after = report["eval_loss_before"], report["eval_loss_after"]
    print(f"adapter '{report['name']}' in {report['adapter_dir']}: {report['steps']} steps, "
          f"train loss {report['train_loss_first']:.4f} -> {report['train_loss_last']:.4f}"
          + (f", eval loss {before:.4f} -> {after:.4f}" if before is not None else "")
          + f", {report['tokens_per_second']:.0f} tokens/s"
          + (f"; {report['skipped_long']} examples longer than --max-seq-len left out"
             if report["skipped_long"] else ""))
    print(f"loss curve: {report['loss_curve']}")
    return 0
