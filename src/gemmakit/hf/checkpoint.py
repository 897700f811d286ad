"""Which files a transformers model loads from.

- A Hugging Face folder must hold safetensors weights. Pickle formats (`.bin`, `.pt`, `.pth`,
  `.ckpt`) can run arbitrary code when unpickled, so they are refused, never loaded.
- A GGUF file is dequantised by transformers (tens of seconds for the 270M), so it is converted
  once into a dense safetensors folder under the data directory and that folder is reused. The cache
  key is the file's name, size and modification time: a replaced file is converted again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from gemmakit.errors import ConfigError

log = logging.getLogger("gemmakit.hf")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_STAMP = "gemmakit-converted.json"


def check_hf_folder(path: Path) -> None:
    """Refuse a folder whose weights are not safetensors (or that has no weights at all)."""
    files = [p for p in path.iterdir() if p.is_file()]
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
    if not safetensors:
        if pickles:
            raise ConfigError(
                f"'{path.name}' holds only pickle weights ({', '.join(pickles[:3])}); pickle files "
                "can run arbitrary code when loaded, so gemmakit refuses them. Convert the "
                "checkpoint to safetensors (model.save_pretrained(..., safe_serialization=True)).")
        raise ConfigError(f"'{path.name}' has no *.safetensors weights")
    if pickles:
        log.warning("ignoring pickle files in %s (only safetensors weights are loaded): %s",
                    path.name, ", ".join(pickles))


def cache_dir_for(gguf: Path, home: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return home / "hf-cache" / f"{gguf.stem}-{key}"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive file lock: two processes starting at once convert the file only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def dense_from_gguf(gguf: Path, home: Path) -> Path:
    """The dense folder for `gguf`, converting it on first use (blocking; tens of seconds)."""
    target = cache_dir_for(gguf, home)
    if (target / _STAMP).is_file():
        return target
    with _lock(target.with_name(target.name + ".lock")):
        if (target / _STAMP).is_file():  # another process converted it while we waited
            return target
        _convert(gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    log.info("converting %s to a dense checkpoint (once; later starts reuse %s)", gguf.name, target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # float32: the dequantised values are exact in it (bf16 would round them again).
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
        # The weights are dense now; transformers' GGUF marker would make save_pretrained refuse.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _STAMP).write_text(json.dumps({"source": gguf.name,
                                              "size": gguf.stat().st_size,
                                              "seconds": round(time.perf_counter() - t0, 1)}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s in %.1f s", gguf.name, time.perf_counter() - t0)


def tokenizer_from_gguf(gguf: Path, home: Path) -> Path:
    """A folder with the tokenizer extracted from `gguf` (cached like the dense conversion; the
    extraction parses the GGUF's vocabulary in Python, ~20 s)."""
    dense = cache_dir_for(gguf, home)
    if (dense / _STAMP).is_file():
        return dense
    target = dense.with_name(dense.name + "-tokenizer")
    if (target / "tokenizer.json").is_file():
        return target
    with _lock(target.with_name(target.name + ".lock")):
        if not (target / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target
