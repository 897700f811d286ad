"""Models pulled from the Hugging Face Hub (`gemmakit pull`), as stored under the data directory:

    <models_dir>/pulled/<name>/<the repository's files>
    <models_dir>/pulled/<name>/gemmakit-pull.json     the manifest, written last

A folder without a manifest is a pull that has not finished (its `.part` files are resumed by
the next pull); it is never served. This module only reads and removes: it imports nothing from
the hub client, so resolving `--model` stays fast.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemmakit.errors import ConfigError

MANIFEST = "gemmakit-pull.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class Pulled:
    name: str
    """The alias `--model` accepts: the catalog's name, or one derived from the file."""
    folder: Path
    repo: str
    revision: str
    """The commit the files were downloaded at."""
    format: str  # gguf | hf
    files: tuple[dict[str, Any], ...]
    """Each {"path", "size", "sha256" (LFS files) or "git_sha1" (small files)}, as checked."""
    catalog_id: str | None = None
    quantization: str | None = None

    @property
    def path(self) -> Path:
        """What an engine loads: the GGUF file, or the folder of a Hugging Face checkpoint."""
        if self.format == "gguf":
            return self.folder / self.files[0]["path"]
        return self.folder

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "repo": self.repo, "revision": self.revision,
                "format": self.format, "catalog_id": self.catalog_id,
                "quantization": self.quantization, "files": list(self.files)}


def pulled_dir(models_dir: Path) -> Path:
    return models_dir / "pulled"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"'{name}' is not a usable model name (lower-case letters, digits, "
                          "'.', '_' and '-')")
    return name


def read(folder: Path) -> Pulled | None:
    """The pull stored in `folder`; None if it has no manifest (unfinished)."""
    try:
        doc = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"the pull manifest {folder / MANIFEST} is unreadable ({e}); "
                          f"remove it with: gemmakit rm {folder.name}") from None
    return Pulled(name=doc["name"], folder=folder, repo=doc["repo"], revision=doc["revision"],
                  format=doc["format"], files=tuple(doc["files"]),
                  catalog_id=doc.get("catalog_id"), quantization=doc.get("quantization"))


def write(p: Pulled) -> None:
    tmp = p.folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(p.to_json(), indent=2))
    tmp.replace(p.folder / MANIFEST)  # the manifest appears whole, after every file is in place


def list_pulled(models_dir: Path) -> list[Pulled]:
    root = pulled_dir(models_dir)
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and (p := read(folder)) is not None:
            out.append(p)
    return out


def find(models_dir: Path, spec: str) -> Pulled | None:
    """The pulled model `spec` names: its own name, or a catalog id that exactly one pulled
    model belongs to (`gemma-3-1b` for `gemma-3-1b-it-qat-q4_0`). Ambiguity is an error."""
    if not _NAME.match(spec):
        return None
    folder = pulled_dir(models_dir) / spec
    if folder.is_dir() and (p := read(folder)) is not None:
        return p
    matches = [p for p in list_pulled(models_dir) if p.catalog_id == spec]
    if len(matches) > 1:
        raise ConfigError(f"'{spec}' names several pulled models "
                          f"({', '.join(p.name for p in matches)}): give one of those names")
    return matches[0] if matches else None


def remove(models_dir: Path, name: str) -> Pulled | None:
    """Delete a pulled model (or an unfinished pull of that name); what was removed."""
    check_name(name)
    folder = pulled_dir(models_dir) / name
    if not folder.is_dir():
        return None
    try:
        p = read(folder)
    except ConfigError:  # an unreadable manifest: removing it is the way out
        p = None
    shutil.rmtree(folder)
    return p or Pulled(name, folder, "?", "?", "?", ())
