"""LoRA training with transformers + PEFT on examples rendered by the server's renderer.

One step: the batch's hidden states from the model body, (B, T, H); the rows whose next token
is a target gathered, (N, H); the output layer on those rows only, (N, V), and cross-entropy over
the N targets. Gemma's output layer is the 262k-entry tied embedding: computing it at every
position costs more than the rest of the model on short supervised spans, so only the N rows are
computed. TRL's SFTTrainer computes the logits at every position (and its token-accuracy and
entropy metrics need them), which is why the loop is PEFT's model under a plain loop.

Determinism and resume: the data order is a function of (seed, epoch) alone, the LoRA weights are
initialised under the seed, and a checkpoint holds the adapter weights, the optimizer and
scheduler states, torch's RNG state, the step, and the loss history. A run resumed from a
checkpoint computes the same steps on the same batches from the same state, so it ends with the
adapter an uninterrupted run ends with.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemmakit.errors import ConfigError
from gemmakit.finetune import store
from gemmakit.finetune.data import RENDERER_VERSION, DataError, Dataset, Encoder, Example, load

log = logging.getLogger("gemmakit.finetune")

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Every attention and MLP projection of a Gemma 3 decoder layer."""
_OUTPUT_TARGETS = ("embed_tokens", "lm_head")
CHECKPOINT = "checkpoint"


@dataclass
class TrainConfig:
    name: str
    data: Path
    model: str = "gemma-3-270m"
    max_steps: int | None = None
    epochs: float | None = None
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    learning_rate: float = 2e-4
    batch_size: int = 4
    max_seq_len: int = 1024
    eval_data: Path | None = None
    eval_split: float | None = None
    eval_every: int | None = None
    save_every: int | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    seed: int = 0
    skip_long: bool = False

    def check(self) -> None:
        store.check_name(self.name)
        if self.max_steps is not None and self.epochs is not None:
            raise ConfigError("give --max-steps or --epochs, not both")
        for flag, v in (("--max-steps", self.max_steps), ("--lora-rank", self.lora_rank),
                        ("--batch-size", self.batch_size), ("--max-seq-len", self.max_seq_len),
                        ("--eval-every", self.eval_every), ("--save-every", self.save_every)):
            if v is not None and v < 1:
                raise ConfigError(f"{flag} must be at least 1")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError("--epochs must be positive")
        if not self.learning_rate > 0:
            raise ConfigError("--learning-rate must be positive")
        if self.lora_alpha <= 0:
            raise ConfigError("--lora-alpha must be positive")
        if self.eval_data is not None and self.eval_split is not None:
            raise ConfigError("give --eval or --eval-split, not both")
        if self.eval_split is not None and not 0 < self.eval_split < 1:
            raise ConfigError("--eval-split must be a fraction between 0 and 1")
        if not self.targets:
            raise ConfigError("--lora-targets must name at least one module")

    def hyperparameters(self) -> dict[str, Any]:
        """What decides the result (compared on --resume; recorded in the manifest)."""
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()
                if k not in ("name", "data", "eval_data", "skip_long")}


@dataclass
class History:
    train: list[tuple[int, float]] = field(default_factory=list)
    """(step, loss) of every step, step counted from 1."""
    eval: list[tuple[int, float]] = field(default_factory=list)
    """(step, eval loss); step 0 is before training."""
    tokens: int = 0
    seconds: float = 0.0
    """Time in training steps only (no evaluation or checkpoint writing)."""


def warn_targets(targets: tuple[str, ...]) -> list[str]:
    hits = [t for t in targets if t in _OUTPUT_TARGETS]
    if not hits:
        return []
    msg = (f"LoRA on {', '.join(hits)}: Gemma ties its output layer to the token embeddings "
           "(262k x hidden), so this trains (and, merged, changes) both; the llama.cpp engine "
           "and the adapter-only GGUF take only the decoder's projections")
    log.warning(msg)
    return [msg]


# --- batches ---------------------------------------------------------------------------------
def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)  # the last, smaller batch is kept: nothing is dropped


def total_steps(cfg: TrainConfig, n: int) -> int:
    spe = steps_per_epoch(n, cfg.batch_size)
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil((cfg.epochs if cfg.epochs is not None else 1.0) * spe))


def batch_for_step(step: int, examples: list[Example], cfg: TrainConfig) -> list[Example]:
    """The examples of 0-based `step`: a permutation per epoch, from (seed, epoch) alone."""
    import torch

    spe = steps_per_epoch(len(examples), cfg.batch_size)
    epoch, k = divmod(step, spe)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    order = torch.randperm(len(examples), generator=g).tolist()
    return [examples[i] for i in order[k * cfg.batch_size:(k + 1) * cfg.batch_size]]


def collate(batch: list[Example], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded ids and attention mask (B, T), and the target mask shifted onto the
    positions that predict them: targets[b, t] is 1 when ids[b, t + 1] is a target."""
    import torch

    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    targets = torch.zeros((len(batch), width), dtype=torch.bool)
    for b, e in enumerate(batch):
        ids[b, :len(e.ids)] = torch.tensor(e.ids)
        attn[b, :len(e.ids)] = 1
        targets[b, :len(e.ids) - 1] = torch.tensor(e.mask[1:], dtype=torch.bool)
    return ids, attn, targets


def batch_loss(model: Any, ids: Any, attn: Any, targets: Any) -> tuple[Any, int]:
    """Mean cross-entropy over the batch's targets, logits computed only where needed."""
    import torch

    base = model.get_base_model()
    hidden = base.model(input_ids=ids, attention_mask=attn).last_hidden_state  # (B, T, H)
    rows = hidden[targets]  # (N, H): the positions that predict a target
    logits = base.lm_head(rows).float()  # (N, V)
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    labels = ids[:, 1:][targets[:, :-1]]  # (N,): the next token at each gathered position
    n = int(labels.numel())
    return torch.nn.functional.cross_entropy(logits, labels, reduction="mean"), n


def eval_loss(model: Any, examples: list[Example], batch_size: int, pad_id: int) -> float:
    """Token-weighted mean loss over `examples` (no gradients; LoRA dropout off)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            loss, n = batch_loss(model, *collate(examples[i:i + batch_size], pad_id))
            total += float(loss) * n
            count += n
    model.train(was_training)
    return total / max(count, 1)


# --- checkpoints -----------------------------------------------------------------------------
def save_checkpoint(work: Path, step: int, model: Any, optimizer: Any, scheduler: Any,
                    history: History, fingerprint: dict[str, Any]) -> None:
    """Everything a resumed run needs, written to a temporary folder and renamed into place."""
    import torch
    from peft import get_peft_model_state_dict

    tmp = work / f".{CHECKPOINT}.{os.getpid()}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"step": step, "adapter": get_peft_model_state_dict(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "history": dataclasses.asdict(history)}, tmp / "state.pt")
    (tmp / "fingerprint.json").write_text(json.dumps(fingerprint, indent=2, sort_keys=True))
    final = work / CHECKPOINT
    old = work / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(work: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    import torch

    ckpt = work / CHECKPOINT
    if not (ckpt / "state.pt").is_file():
        raise ConfigError(f"--resume: no checkpoint in {work} (nothing to resume)")
    saved = json.loads((ckpt / "fingerprint.json").read_text())
    diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if diff:
        raise ConfigError(f"--resume: the checkpoint was made with different settings or data "
                          f"({', '.join(diff)}); resume with the same ones, or start afresh "
                          "without --resume")
    state: dict[str, Any] = torch.load(ckpt / "state.pt", weights_only=False)
    return state


# --- the run ---------------------------------------------------------------------------------
@dataclass
class Progress:
    """Where a run reports: a tqdm bar on stderr by default."""

    total: int
    enabled: bool = True
    bar: Any = None

    def __post_init__(self) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc="finetune", unit="step", file=sys.stderr,
                            dynamic_ncols=True)

    def start(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step)

    def step(self, loss: float, lr: float, tps: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}")
            self.bar.update(1)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def split_eval(ds: Dataset, cfg: TrainConfig) -> tuple[list[Example], list[Example]]:
    import torch

    assert cfg.eval_split is not None
    n = len(ds.examples)
    k = max(1, round(n * cfg.eval_split))
    if k >= n:
        raise DataError(f"--eval-split {cfg.eval_split} leaves no training examples out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    held = set(order[:k])
    return ([e for i, e in enumerate(ds.examples) if i not in held],
            [e for i, e in enumerate(ds.examples) if i in held])


def hf_tokenize(tokenizer: Any) -> Callable[..., list[int]]:
    """The transformers engine's `tokenize`, over this tokenizer."""
    from gemmakit.hf.loading import tokenize

    def fn(text: str, *, special: bool = False) -> list[int]:
        return tokenize(tokenizer, text, special=special)

    return fn


def train(cfg: TrainConfig, home: Path, *, resume: bool = False, threads: int | None = None,
          progress: bool = True, on_checkpoint: Callable[[int], None] | None = None
          ) -> dict[str, Any]:
    """Train an adapter into the store and return the final report. Blocking."""
    cfg.check()
    warnings = warn_targets(cfg.targets)
    final_dir = store.adapters_dir(home) / cfg.name
    if (final_dir / store.MANIFEST).exists():
        raise ConfigError(f"adapter '{cfg.name}' exists already ({final_dir}); pick another "
                          f"--name or remove it (gemmakit adapters rm {cfg.name})")
    work = store.training_dir(home, cfg.name)
    if not resume and (work / CHECKPOINT).exists():
        raise ConfigError(f"an interrupted run of '{cfg.name}' has a checkpoint in {work}: "
                          "continue it with --resume, or remove that folder to start afresh")

    import torch

    from gemmakit.catalog import resolve
    from gemmakit.hf import loading
    from gemmakit.hf.checkpoint import check_hf_folder, dense_from_gguf

    if threads:
        torch.set_num_threads(threads)
    ref = resolve(cfg.model, home / "models")
    if ref.format == "gguf":
        folder = dense_from_gguf(ref.path, home)
    else:
        check_hf_folder(ref.path)
        folder = ref.path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = Encoder(hf_tokenize(tokenizer))
    ds = load(cfg.data, encoder, max_seq_len=cfg.max_seq_len, skip_long=cfg.skip_long)
    train_ex, eval_ex = ds.examples, []
    eval_ds: Dataset | None = None
    if cfg.eval_data is not None:
        eval_ds = load(cfg.eval_data, encoder, max_seq_len=cfg.max_seq_len,
                       skip_long=cfg.skip_long)
        eval_ex = eval_ds.examples
    elif cfg.eval_split is not None:
        train_ex, eval_ex = split_eval(ds, cfg)
    steps = total_steps(cfg, len(train_ex))
    eval_every = cfg.eval_every or max(1, steps // 5)
    save_every = cfg.save_every or eval_every
    base_sha = store.file_sha256(ref.path)
    fingerprint = {"hyperparameters": cfg.hyperparameters(), "data_sha256": ds.sha256,
                   "eval_sha256": eval_ds.sha256 if eval_ds else None, "base_sha256": base_sha,
                   "renderer": RENDERER_VERSION, "steps": steps}

    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import get_linear_schedule_with_warmup

    loaded = loading.load(folder, dtype=torch.float32)
    if loaded.vision or loaded.audio:
        log.info("training the text decoder of a multimodal checkpoint (text-only data)")
    torch.manual_seed(cfg.seed)  # LoRA's A matrices are initialised from torch's RNG
    # A multimodal checkpoint's towers have q_proj/k_proj/... too: only the decoder is adapted.
    towers = r".*(vision_tower|audio_tower|multi_modal_projector|embed_vision|embed_audio).*"
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.targets), bias="none", task_type="CAUSAL_LM",
                      exclude_modules=towers if loaded.vision or loaded.audio else None)
    try:
        model = get_peft_model(loaded.model, lora)
    except ValueError as e:
        raise ConfigError(f"--lora-targets: {e}") from None
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(steps * cfg.warmup_ratio), steps)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    history = History()
    start = 0
    if resume:
        state = load_checkpoint(work, fingerprint)
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        h = state["history"]
        history = History([tuple(x) for x in h["train"]], [tuple(x) for x in h["eval"]],
                          h["tokens"], h["seconds"])
        start = state["step"]
        log.info("resuming '%s' at step %d of %d", cfg.name, start, steps)
    work.mkdir(parents=True, exist_ok=True)

    bar = Progress(steps, enabled=progress)
    bar.start(start)
    try:
        if eval_ex and start == 0:
            history.eval.append((0, eval_loss(model, eval_ex, cfg.batch_size, pad_id)))
            bar.note(f"eval loss before training: {history.eval[-1][1]:.4f}")
        for step in range(start, steps):
            batch = collate(batch_for_step(step, train_ex, cfg), pad_id)
            t0 = time.perf_counter()
            loss, _ = batch_loss(model, *batch)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history.seconds += time.perf_counter() - t0
            history.tokens += int(batch[1].sum())
            history.train.append((step + 1, loss.item()))
            bar.step(history.train[-1][1], scheduler.get_last_lr()[0], history.tokens / history.seconds)
            done = step + 1
            if eval_ex and (done % eval_every == 0 or done == steps):
                history.eval.append((done, eval_loss(model, eval_ex, cfg.batch_size, pad_id)))
                bar.note(f"step {done}: eval loss {history.eval[-1][1]:.4f}")
            if done % save_every == 0 and done < steps:
                save_checkpoint(work, done, model, optimizer, scheduler, history, fingerprint)
                if on_checkpoint is not None:
                    on_checkpoint(done)
    finally:
        bar.close()

    report = {
        "name": cfg.name, "steps": steps, "epochs": steps / steps_per_epoch(len(train_ex),
                                                                          cfg.batch_size),
        "examples": len(train_ex), "eval_examples": len(eval_ex), "data_format": ds.format,
        "skipped_long": ds.skipped_long + (eval_ds.skipped_long if eval_ds else 0),
        "supervised_tokens": sum(e.supervised for e in train_ex),
        "train_loss_first": history.train[0][1], "train_loss_last": history.train[-1][1],
        "eval_loss_before": history.eval[0][1] if history.eval else None,
        "eval_loss_after": history.eval[-1][1] if history.eval else None,
        "tokens_per_second": history.tokens / history.seconds if history.seconds else None,
        "train_seconds": history.seconds, "resumed_at": start or None, "warnings": warnings,
    }
    _write_adapter(final_dir, model, cfg, ref, base_sha, ds, eval_ds, history, report)
    shutil.rmtree(work, ignore_errors=True)
    report["adapter_dir"] = str(final_dir)
    report["loss_curve"] = str(final_dir / "loss.png")
    return report


def _write_adapter(final_dir: Path, model: Any, cfg: TrainConfig, ref: Any, base_sha: str,
                   ds: Dataset, eval_ds: Dataset | None, history: History,
                   report: dict[str, Any]) -> None:
    from gemmakit import __version__

    tmp = final_dir.with_name(f".{final_dir.name}.{os.getpid()}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    plot_losses(history, tmp / "loss.png", cfg.name)
    manifest = {
        "name": cfg.name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gemmakit": __version__,
        "renderer": RENDERER_VERSION,
        "base": {"model": ref.name, "path": str(ref.path), "format": ref.format,
                 "sha256": base_sha, "model_type": model.get_base_model().config.model_type,
                 "num_layers": model.get_base_model().config.num_hidden_layers},
        "data": {"path": str(ds.path), "sha256": ds.sha256, "format": ds.format,
                 "examples": len(ds.examples)},
        "eval_data": None if eval_ds is None else {"path": str(eval_ds.path),
                                                   "sha256": eval_ds.sha256},
        "hyperparameters": cfg.hyperparameters(),
        "metrics": {**report, "adapter_dir": str(final_dir)},
        "history": {"train": history.train, "eval": history.eval},
    }
    (tmp / store.MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(tmp, final_dir)


def plot_losses(history: History, out: Path, title: str) -> None:
    """The loss curve (train per step, eval at its steps) as a PNG."""
    try:
        import matplotlib
    except ImportError:  # the bench extra; the manifest still holds the numbers
        log.warning("matplotlib is not installed: no loss curve (pip install 'gemmakit[bench]')")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if history.train:
        ax.plot(*zip(*history.train), label="train", linewidth=1)
    if history.eval:
        ax.plot(*zip(*history.eval), "o-", label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_yscale("log")
    ax.set_title(f"gemmakit finetune {title}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
