"""Fixtures for the transformers engine: the bundled 270M converted to a dense folder (once per data
directory), tiny random Gemma 3 / Gemma 3n checkpoints, and real servers on them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Server, start_server, stop_server
from tests.media_samples import png_bytes


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
