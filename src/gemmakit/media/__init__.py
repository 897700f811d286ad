"""Media input: decoding images (Pillow) and audio (soundfile) under limits, and resolving image
URLs. Engine-agnostic; the heavy imports (PIL, soundfile) happen inside the functions.

Every refusal is an `InvalidRequestError` without a `param`: the caller knows which part it was
decoding and names it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaLimits:
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_images: int = 8
    max_audio_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 30.0
    max_audio_clips: int = 4

    @classmethod
    def from_settings(cls, settings: object) -> MediaLimits:
        return cls(**{f: getattr(settings, f) for f in cls.__dataclass_fields__
                      if hasattr(settings, f)})
