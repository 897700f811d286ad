"""The Python API (`gemmakit.load`) on the tiny Gemma 3n: sync and async forms."""

from __future__ import annotations

import asyncio

import pytest

import gemmakit
from gemmakit.errors import InvalidRequestError, UnsupportedError
from gemmakit.types import AudioPart, ImagePart
from tests.media_samples import png_bytes, wav_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma3n(tiny_dir, gemmakit_home):
    g = gemmakit.load(str(tiny_dir / "gemma3n"), engine="transformers", home=gemmakit_home,
                      threads=2, max_transcript_tokens=4)
    yield g
    g.close()


def test_sync_forms(gemma3n, tmp_path):
    r = gemma3n.chat("Hello", max_tokens=3, temperature=0)
    assert r.completion_tokens == 3 and r.finish_reason == "length" and r.prompt_tokens > 3
    pieces = list(gemma3n.stream_chat([{"role": "user", "content": "Hello"}], max_tokens=3,
                                      temperature=0))
    assert "".join(pieces) == r.text
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_bytes(0.5))
    assert isinstance(gemma3n.transcribe(clip, language="en"), str)
    assert isinstance(gemma3n.translate(wav_bytes(0.5), format="wav"), str)
    assert gemma3n.health().ok


def test_async_forms_and_seed_signature(gemma3n):
    async def main():
        r = await gemma3n.achat("Hello", max_tokens=2, temperature=0)
        text = "".join([p async for p in gemma3n.astream_chat("Hello", max_tokens=2,
                                                              temperature=0)])
        g = await gemma3n.generate_async(
            [{"role": "user", "content": "What is said?"}], {"max_tokens": 2, "temperature": 0},
            [AudioPart(wav_bytes(0.3), "wav")])
        t = await gemma3n.atranscribe(wav_bytes(0.3), format="wav")
        return r, text, g, t

    r, text, g, t = asyncio.run(main())
    assert text == r.text
    assert g.prompt_tokens > 188  # the audio tokens are in the prompt
    assert isinstance(t, str)


def test_refusals(gemma3n):
    with pytest.raises(UnsupportedError):  # no vision tower without timm
        asyncio.run(gemma3n.generate_async("x", {"max_tokens": 1},
                                           [ImagePart(png_bytes(4, 4), "image/png")]))
    with pytest.raises(InvalidRequestError):
        gemma3n.process_audio(wav_bytes(0.2), task="summarize", format="wav")
    with pytest.raises(InvalidRequestError):
        gemma3n.transcribe(b"not audio", format="wav")
