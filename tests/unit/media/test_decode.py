"""Media decoding under limits (Pillow, soundfile), image URL resolution, placeholder expansion."""

from __future__ import annotations

import asyncio
import base64
import http.server
import threading
from types import SimpleNamespace

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


def _messages(url: str):
    part = SimpleNamespace(image_url=SimpleNamespace(url=url))
    return [SimpleNamespace(content="plain"), SimpleNamespace(content=[part])], part


def _settings(**kw):
    base = {"allow_remote_media": False, "media_dir": None, "max_image_bytes": 1 << 20}
    return SimpleNamespace(**{**base, **kw})


def test_remote_url_needs_the_flag_and_is_fetched_with_it():
    png = png_bytes(3, 3)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/x.png"
    try:
        from gemmakit.media.urls import inline_image_urls

        msgs, part = _messages(url)
        with pytest.raises(InvalidRequestError, match="--allow-remote-media") as ei:
            asyncio.run(inline_image_urls(msgs, _settings()))
        assert ei.value.param == "messages[1].content[0].image_url.url"
        asyncio.run(inline_image_urls(msgs, _settings(allow_remote_media=True)))
        assert part.image_url.url == "data:image/png;base64," + base64.b64encode(png).decode()
        msgs, part = _messages(url)
        with pytest.raises(InvalidRequestError, match="larger than 10"):
            asyncio.run(inline_image_urls(msgs, _settings(allow_remote_media=True,
                                                          max_image_bytes=10)))
    finally:
        srv.shutdown()


def test_local_files_only_under_media_dir(tmp_path):
    from gemmakit.media.urls import inline_image_urls

    inside = tmp_path / "in"
    inside.mkdir()
    (inside / "a.png").write_bytes(png_bytes(2, 2))
    (tmp_path / "secret.png").write_bytes(png_bytes(2, 2))
    (inside / "link.png").symlink_to(tmp_path / "secret.png")
    msgs, part = _messages(f"file://{inside}/a.png")
    asyncio.run(inline_image_urls(msgs, _settings(media_dir=inside)))
    assert part.image_url.url.startswith("data:image/png;base64,")
    for url in (f"file://{inside}/link.png", f"file://{inside}/../secret.png"):
        msgs, _ = _messages(url)
        with pytest.raises(InvalidRequestError, match="no such image file"):
            asyncio.run(inline_image_urls(msgs, _settings(media_dir=inside)))
    msgs, _ = _messages(f"file://{inside}/a.png")
    with pytest.raises(InvalidRequestError, match="--media-dir"):
        asyncio.run(inline_image_urls(msgs, _settings()))
