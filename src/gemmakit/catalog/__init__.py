"""Model resolution: what `--model` names, and where its files are.

`--model` takes a catalog alias (`gemma-3-270m`, the bundled GGUF), the name of a model fetched
with `gemmakit pull` (or the catalog id of exactly one such model), a path to a `.gguf` file, or
(with the transformers engine) a Hugging Face folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gemmakit.catalog import pulled
from gemmakit.catalog.bundled import BUNDLED_ALIAS, ensure_bundled
from gemmakit.errors import ConfigError

ModelFormat = Literal["gguf", "hf"]


@dataclass(frozen=True)
class ModelRef:
    name: str
    """The id the API reports and accepts."""
    path: Path
    format: ModelFormat


def resolve(spec: str, models_dir: Path, *, progress: bool = True) -> ModelRef:
    """Turn a `--model` value into files on disk (assembling the bundled model on first use)."""
    if spec == BUNDLED_ALIAS:
        return ModelRef(BUNDLED_ALIAS, ensure_bundled(models_dir, progress=progress), "gguf")
    if (p := pulled.find(models_dir, spec)) is not None:
        return pulled_ref(p)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelRef(path.stem, path.resolve(), "gguf")
    if path.is_dir() and (path / "config.json").is_file():
        return ModelRef(path.name, path.resolve(), "hf")
    if path.exists():
        raise ConfigError(f"'{spec}' is neither a .gguf file nor a model folder with config.json")
    raise ConfigError(f"unknown model '{spec}': not a catalog alias ({BUNDLED_ALIAS}), "
                      "not a pulled model (gemmakit models lists them; gemmakit pull REPO[:FILE] "
                      "fetches one) and no such file or folder")


def pulled_ref(p: pulled.Pulled) -> ModelRef:
    path = p.path
    if not path.exists():
        raise ConfigError(f"the pulled model '{p.name}' is missing {path}; pull it again "
                          f"(gemmakit rm {p.name}, then gemmakit pull {p.repo})")
    return ModelRef(p.name, path, "gguf" if p.format == "gguf" else "hf")


def local_models(models_dir: Path) -> list[ModelRef]:
    """Models available without downloading: the bundled one, GGUF files in the data dir and
    the models `gemmakit pull` stored there."""
    refs = [ModelRef(BUNDLED_ALIAS, ensure_bundled(models_dir), "gguf")]
    if models_dir.is_dir():
        seen = {refs[0].path}
        for p in sorted(models_dir.glob("*.gguf")):
            if p.resolve() not in seen:
                refs.append(ModelRef(p.stem, p.resolve(), "gguf"))
    refs.extend(ModelRef(p.name, p.path, "gguf" if p.format == "gguf" else "hf")
                for p in pulled.list_pulled(models_dir) if p.path.exists())
    return refs


__all__ = ["ModelRef", "resolve", "local_models", "BUNDLED_ALIAS"]
