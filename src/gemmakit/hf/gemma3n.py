"""Gemma 3n without its vision tower, for installs without timm (see hf/loading.py).

transformers' Gemma3nModel builds the timm vision tower unconditionally in __init__; these
subclasses build everything else exactly as it does and leave the tower out. The checkpoint's
`model.vision_tower.*` weights are skipped at load time."""

from __future__ import annotations

from torch import nn
from transformers import AutoModel
from transformers.models.gemma3n.modeling_gemma3n import (
    Gemma3nForConditionalGeneration,
    Gemma3nModel,
    Gemma3nMultimodalEmbedder,
    Gemma3nPreTrainedModel,
)


class Gemma3nTextAudioModel(Gemma3nModel):
    def __init__(self, config) -> None:  # mirrors Gemma3nModel.__init__ minus the vision tower
        Gemma3nPreTrainedModel.__init__(self, config)
        self.vision_tower = None
        self.vocab_size = config.text_config.vocab_size
        self.language_model = AutoModel.from_config(config.text_config)
        self.vocab_size_per_layer_input = config.text_config.vocab_size_per_layer_input
        self.audio_tower = AutoModel.from_config(config.audio_config)
        self.embed_vision = Gemma3nMultimodalEmbedder(config.vision_config, config.text_config)
        self.embed_audio = Gemma3nMultimodalEmbedder(config.audio_config, config.text_config)
        self.post_init()

    def get_image_features(self, *args, **kwargs):
        raise RuntimeError("this Gemma 3n was loaded without its vision tower")


class Gemma3nTextAudioForConditionalGeneration(Gemma3nForConditionalGeneration):
    _gemmakit_no_vision = True
    _keys_to_ignore_on_load_unexpected = [r"^model\.vision_tower\."]

    def __init__(self, config) -> None:
        Gemma3nPreTrainedModel.__init__(self, config)
        self.model = Gemma3nTextAudioModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size,
                                 bias=False)
        self.post_init()
