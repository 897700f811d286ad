"""Audio: soundfile (libsndfile) decodes WAV, FLAC, OGG and MP3; the result is mixed to mono and
resampled to the model's rate (16 kHz for Gemma 3n) with scipy's polyphase filter."""

from __future__ import annotations

import io
from math import gcd

import numpy as np

from gemmakit.errors import InvalidRequestError
from gemmakit.media import MediaLimits
from gemmakit.types import AudioPart

# OpenAI's input_audio formats and the file types the audio endpoints accept, by libsndfile name.
FORMATS = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "OGG", "oga": "OGG"}


def decode_audio(part: AudioPart, limits: MediaLimits, sampling_rate: int) -> np.ndarray:
    """Mono float32 samples at `sampling_rate`; InvalidRequestError (400) if not acceptable."""
    import soundfile as sf

    if len(part.data) > limits.max_audio_bytes:
        raise InvalidRequestError(f"the audio is {len(part.data)} bytes; the limit is "
                                  f"{limits.max_audio_bytes}.")
    fmt = FORMATS.get(part.format.lower().lstrip("."))
    readable = sf.available_formats()
    if fmt is None or fmt not in readable:
        names = ", ".join(sorted(k for k, v in FORMATS.items() if v in readable))
        raise InvalidRequestError(f"unsupported audio format '{part.format}' (supported: "
                                  f"{names}).")
    try:
        with sf.SoundFile(io.BytesIO(part.data)) as f:
            if f.format != fmt:
                raise InvalidRequestError(f"the data is {f.format}, not the declared "
                                          f"'{part.format}'.")
            seconds = f.frames / f.samplerate if f.samplerate else 0.0
            if seconds > limits.max_audio_seconds:
                raise InvalidRequestError(f"the audio lasts {seconds:.1f} s; the limit is "
                                          f"{limits.max_audio_seconds:g} s.")
            rate = f.samplerate
            data = f.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError:
        raise InvalidRequestError("the audio data is corrupt or not a supported audio file.") \
            from None
    if data.size == 0:
        raise InvalidRequestError("the audio is empty.")
    mono = data.mean(axis=1)
    if rate != sampling_rate:
        from scipy.signal import resample_poly

        g = gcd(rate, sampling_rate)
        mono = resample_poly(mono, sampling_rate // g, rate // g).astype(np.float32)
    return mono
