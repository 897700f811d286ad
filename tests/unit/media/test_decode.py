"""Media decoding under limits (Pillow, soundfile), placeholder expansion. (URL resolution is
tested with the safety guard: tests/unit/safety/test_media_paths.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from gemmakit.errors import InvalidRequestError
from gemmakit.media import MediaLimits
from gemmakit.types import AudioPart, ImagePart
from tests.media_samples import jpeg_bytes, png_bomb, png_bytes, wav_bytes

pytest.importorskip("PIL")
pytest.importorskip("soundfile")


def test_image_decoded_to_rgb_and_type_from_bytes_when_undeclared():
    from gemmakit.media.images import decode_image

    img = decode_image(ImagePart(png_bytes(7, 5), "image/png"), MediaLimits())
    assert img.size == (7, 5) and img.mode == "RGB"
    assert decode_image(ImagePart(jpeg_bytes(4, 4), "application/octet-stream"),
                        MediaLimits()).size == (4, 4)


@pytest.mark.parametrize(("data", "mime", "limits", "match"), [
    (png_bytes(8, 8), "image/jpeg", MediaLimits(), "not the declared"),
    (png_bytes(8, 8), "image/svg+xml", MediaLimits(), "unsupported image type"),
    (b"\x89PNG\r\n\x1a\n garbage", "image/png", MediaLimits(), "corrupt"),
    (png_bytes(8, 8), "image/png", MediaLimits(max_image_bytes=10), "limit is 10"),
    (png_bytes(20, 20), "image/png", MediaLimits(max_image_pixels=399), "pixels"),
    (png_bomb(), "image/png", MediaLimits(), "decompression bomb"),
])
def test_bad_images_refused(data, mime, limits, match):
    from gemmakit.media.images import decode_image

    with pytest.raises(InvalidRequestError, match=match):
        decode_image(ImagePart(data, mime), limits)


def test_audio_mixed_to_mono_and_resampled():
    from gemmakit.media.audio import decode_audio

    wave = decode_audio(AudioPart(wav_bytes(0.5, rate=44100), "wav"), MediaLimits(), 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == 8000
    flac = decode_audio(AudioPart(wav_bytes(0.25, rate=16000, fmt="FLAC"), "flac"),
                        MediaLimits(), 16000)
    assert len(flac) == 4000


@pytest.mark.parametrize(("part", "limits", "match"), [
    (AudioPart(wav_bytes(2.0), "wav"), MediaLimits(max_audio_seconds=1.0), "lasts 2.0 s"),
    (AudioPart(wav_bytes(0.1), "flac"), MediaLimits(), "not the declared"),
    (AudioPart(wav_bytes(0.1), "aac"), MediaLimits(), "unsupported audio format"),
    (AudioPart(b"RIFF1234WAVEjunk", "wav"), MediaLimits(), "corrupt"),
    (AudioPart(wav_bytes(0.1), "wav"), MediaLimits(max_audio_bytes=100), "limit is 100"),
])
def test_bad_audio_refused(part, limits, match):
    from gemmakit.media.audio import decode_audio

    with pytest.raises(InvalidRequestError, match=match):
        decode_audio(part, limits, 16000)
