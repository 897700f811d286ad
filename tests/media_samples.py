"""Images and audio built in code for the media tests (no binary fixtures in the repository)."""

from __future__ import annotations

import io
import struct
import zlib


def png_bytes(w: int, h: int, color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 10)).save(buf, "JPEG")
    return buf.getvalue()


def png_bomb(w: int = 30000, h: int = 30000) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression bomb's signature): a real
    1x1 PNG with its IHDR dimensions rewritten and its CRC fixed."""
    data = bytearray(png_bytes(1, 1))
    i = data.index(b"IHDR")
    data[i + 4:i + 12] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[i:i + 17])) & 0xFFFFFFFF
    data[i + 17:i + 21] = struct.pack(">I", crc)
    return bytes(data)


def wav_bytes(seconds: float, rate: int = 22050, fmt: str = "WAV") -> bytes:
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype("float32"), rate, format=fmt)
    return buf.getvalue()
