"""Prompt tokenization with media: each image/audio placeholder the prompt renderer emitted is
replaced by the tokens the engine says stand for that part (Gemma 3: `\\n\\n<start_of_image>` + 256
image tokens + `<end_of_image>\\n\\n`), so usage counts and context checks include them. Limits on
how many parts a request may carry are checked first; any refusal names the part."""

from __future__ import annotations

from collections.abc import Sequence

from gemmakit.errors import GemmakitError, InvalidRequestError
from gemmakit.media import MediaLimits
from gemmakit.prompts.gemma import START_OF_AUDIO, START_OF_IMAGE, Prompt
from gemmakit.types import AudioPart, ImagePart, Message

PLACEHOLDERS = (START_OF_IMAGE, START_OF_AUDIO)


def media_params(messages: Sequence[Message]) -> list[str]:
    """The request parameter of every media part, in the order the renderer emits them."""
    out = []
    for i, m in enumerate(messages):
        if isinstance(m.content, list):
            out += [f"messages[{i}].content[{j}]" for j, p in enumerate(m.content)
                    if isinstance(p, (ImagePart, AudioPart))]
    return out


def check_counts(prompt: Prompt, params: Sequence[str], limits: MediaLimits) -> None:
    n_img = n_aud = 0
    for part, param in zip(prompt.media, params):
        if isinstance(part, ImagePart):
            n_img += 1
            if n_img > limits.max_images:
                raise InvalidRequestError(f"too many images: at most {limits.max_images} per "
                                          "request.", param=param)
        elif isinstance(part, AudioPart):
            n_aud += 1
            if n_aud > limits.max_audio_clips:
                raise InvalidRequestError(f"too many audio clips: at most "
                                          f"{limits.max_audio_clips} per request.", param=param)


def tokenize_with_media(engine, prompt: Prompt, params: Sequence[str]
                        ) -> tuple[list[int], list[object]]:
    """(prompt token ids with every placeholder expanded, the engine's features per part)."""
    check_counts(prompt, params, getattr(engine, "media_limits", MediaLimits()))
    ids: list[int] = []
    features: list[object] = []
    media = list(prompt.media)
    for seg in prompt.segments:
        if seg.special and seg.text in PLACEHOLDERS and len(features) < len(media):
            k = len(features)
            try:
                enc = engine.encode_media(media[k])
            except GemmakitError as e:
                if e.param is None:
                    e.param = params[k]
                    e.message = f"{params[k]}: {e.message}"
                raise
            ids.extend(enc.token_ids)
            features.append(enc.features)
        else:
            ids.extend(engine.tokenize(seg.text, special=seg.special))
    return ids, features
