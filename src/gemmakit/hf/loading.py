"""Loading a transformers checkpoint: the model class the checkpoint declares, its tokenizer, and
(for vision/audio checkpoints) its processor with the PIL image backend.

Gemma 3n's vision tower is a timm MobileNetV5; timm needs torchvision, which has no CPU build here.
Where timm cannot be imported, Gemma 3n is loaded for text and audio only: the vision tower is not
built, its weights are skipped, and image input is refused (see docs/transformers.md)."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer

from gemmakit.errors import ConfigError

log = logging.getLogger("gemmakit.hf")


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    processor: Any | None
    config: Any
    vision: bool
    audio: bool
    notes: list[str] = field(default_factory=list)


def timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


def text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def _model_class(config: Any) -> tuple[Any, list[str]]:
    """The transformers model class (a PreTrainedModel subclass) for `config`, and notes."""
    notes: list[str] = []
    names = list(getattr(config, "architectures", None) or [])
    if config.model_type == "gemma3n" and not timm_available():
        from gemmakit.hf.gemma3n import Gemma3nTextAudioForConditionalGeneration

        notes.append("vision tower not loaded: it needs timm (and torchvision), which is not "
                     "installed; images are refused")
        return Gemma3nTextAudioForConditionalGeneration, notes
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls, notes
    raise ConfigError(f"this transformers version has no model class for architectures {names} "
                      f"(model type '{config.model_type}')")


def tokenize(tokenizer: Any, text: str, *, special: bool = False) -> list[int]:
    """Token ids of `text`, never adding BOS; `special` parses control-token markup. (The
    transformers engine's tokenization, shared with fine-tuning so training ids equal served ones.)
    """
    ids: list[int] = tokenizer(text, add_special_tokens=False,
                               split_special_tokens=not special)["input_ids"]
    return ids


def load(path: Path, *, dtype: torch.dtype | None = None, device: str = "cpu",
         quantization_config: Any = None) -> Loaded:
    """Load model, tokenizer and processor from a dense safetensors folder (blocking)."""
    config = AutoConfig.from_pretrained(path)
    cls, notes = _model_class(config)
    kwargs: dict[str, Any] = {"dtype": dtype or "auto", "use_safetensors": True}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device != "cpu":
        kwargs["device_map"] = device
    model = cls.from_pretrained(path, **kwargs)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    vision = hasattr(config, "vision_config") and not getattr(cls, "_gemmakit_no_vision", False)
    audio = hasattr(config, "audio_config")
    processor = None
    if vision or audio:
        from transformers import AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(path, backend="pil")
        except (OSError, ValueError) as e:
            raise ConfigError(f"'{path.name}' is a multimodal checkpoint without a usable "
                              f"processor (preprocessor_config.json): {e}") from None
    return Loaded(model, tokenizer, processor, config, vision, audio, notes)
