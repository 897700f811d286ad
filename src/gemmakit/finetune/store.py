"""The adapter store: ``$GEMMAKIT_HOME/adapters/NAME/`` holds PEFT's files
(``adapter_model.safetensors``, ``adapter_config.json``), the manifest (``gemmakit-adapter.json``:
base model and its sha256, data hash, hyperparameters, metrics, renderer version), the loss
curve (``loss.png``) and, once served on llama.cpp, the converted GGUF LoRA (``adapter.gguf``).

An adapter exists once its manifest does (written last); a training run works in
``adapters/.NAME.train/`` (its checkpoints), which `--resume` continues."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemmakit.errors import ConfigError

MANIFEST = "gemmakit-adapter.json"
LORA_GGUF = "adapter.gguf"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def adapters_dir(home: Path) -> Path:
    return home / "adapters"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name.endswith((".train", ".part")):
        raise ConfigError(f"adapter name '{name}' is not allowed: use 1-64 letters, digits, '.', "
                          "'_' or '-', starting with a letter or digit")
    return name


def training_dir(home: Path, name: str) -> Path:
    return adapters_dir(home) / f".{check_name(name)}.train"


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's weight and config files (names and bytes, sorted)."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.iterdir()):
            if p.suffix in (".safetensors", ".json") and p.is_file() \
                    and not p.name.startswith("gemmakit-"):
                h.update(p.name.encode() + b"\0")
                _feed(h, p)
        return h.hexdigest()
    _feed(h, path)
    return h.hexdigest()


def _feed(h: Any, path: Path) -> None:
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    manifest: dict[str, Any]

    @property
    def base_sha256(self) -> str:
        return str(self.manifest["base"]["sha256"])

    @property
    def base_name(self) -> str:
        return str(self.manifest["base"]["model"])

    @property
    def lora_alpha(self) -> float:
        return float(self.manifest["hyperparameters"]["lora_alpha"])

    @property
    def lora_rank(self) -> int:
        return int(self.manifest["hyperparameters"]["lora_rank"])

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        metrics = m.get("metrics", {})
        return {"name": self.name, "base": self.base_name, "created": m.get("created"),
                "steps": metrics.get("steps"), "eval_loss_after": metrics.get("eval_loss_after"),
                "path": str(self.path)}


def find(home: Path, name: str) -> Adapter | None:
    path = adapters_dir(home) / name
    if not _NAME.fullmatch(name) or not (path / MANIFEST).is_file():
        return None
    return Adapter(name, path, json.loads((path / MANIFEST).read_text()))


def get(home: Path, name: str) -> Adapter:
    a = find(home, name)
    if a is None:
        known = ", ".join(x.name for x in list_adapters(home)) or "none yet"
        raise ConfigError(f"no adapter named '{name}' (adapters: {known}; gemmakit finetune "
                          "makes one)")
    return a


def list_adapters(home: Path) -> list[Adapter]:
    root = adapters_dir(home)
    if not root.is_dir():
        return []
    out = [find(home, p.name) for p in sorted(root.iterdir()) if p.is_dir()]
    return [a for a in out if a is not None]


def remove(home: Path, name: str) -> Path:
    a = get(home, name)
    (a.path / MANIFEST).unlink()  # first: a half-removed folder is no longer an adapter
    shutil.rmtree(a.path)
    shutil.rmtree(training_dir(home, name), ignore_errors=True)
    return a.path
