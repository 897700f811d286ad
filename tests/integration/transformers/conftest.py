"""Fixtures for the transformers engine: the bundled 270M converted to a dense folder (once per data
directory), tiny random Gemma 3 / Gemma 3n checkpoints, and real servers on them."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Server, start_server, stop_server


@pytest.fixture(scope="session")
def dense_270m(gemmakit_home: Path, model_path: Path) -> Path:
    from gemmakit.hf.checkpoint import dense_from_gguf

    return dense_from_gguf(model_path, gemmakit_home)


@pytest.fixture(scope="session")
def hf_engine(dense_270m: Path):
    """The transformers engine on the bundled 270M, in-process."""
    from gemmakit.engines.transformers import TransformersEngine

    eng = TransformersEngine(dense_270m, context_length=2048)
    yield eng
    asyncio.run(eng.aclose())


@pytest.fixture(scope="session")
def tiny_dir(gemmakit_home: Path, model_path: Path, tmp_path_factory) -> Path:
    """Both tiny checkpoints, written by the real `gemmakit tiny-model` command."""
    from gemmakit.cli.main import main

    out = tmp_path_factory.mktemp("tiny")
    for kind in ("gemma3", "gemma3n"):
        assert main(["tiny-model", kind, str(out / kind), "--home", str(gemmakit_home)]) == 0
    return out


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    (d / "red.png").write_bytes(png_bytes(40, 30))
    return d


@pytest.fixture(scope="session")
def vision_server(gemmakit_home: Path, tiny_dir: Path, media_dir: Path,
                  tmp_path_factory) -> Iterator[Server]:
    s = start_server(gemmakit_home, tmp_path_factory.mktemp("vision"), "--engine", "transformers",
                     "--model", str(tiny_dir / "gemma3"), "--served-model-name", "tiny-gemma3",
                     "--max-images", "2", "--max-image-bytes", "200000",
                     "--max-image-pixels", "1000000", "--media-dir", str(media_dir),
                     "--threads", "2")
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def audio_server(gemmakit_home: Path, tiny_dir: Path, tmp_path_factory) -> Iterator[Server]:
    s = start_server(gemmakit_home, tmp_path_factory.mktemp("audio"), "--engine", "transformers",
                     "--model", str(tiny_dir / "gemma3n"), "--served-model-name", "tiny-gemma3n",
                     "--max-audio-seconds", "5", "--max-transcript-tokens", "6",
                     "--threads", "2")
    yield s
    stop_server(s)


def openai_client(server: Server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


# --- media fixtures built in code -----------------------------------------------------------
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
