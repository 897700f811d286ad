"""Images through the real server and the openai client into the tiny random Gemma 3, and every
bad-media case refused with a 400 naming the part."""

from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest

from tests.integration.transformers.conftest import openai_client
from tests.media_samples import jpeg_bytes, png_bomb, png_bytes, wav_bytes

pytestmark = pytest.mark.integration

MODEL = "tiny-gemma3"


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def ask(client, *parts, max_tokens: int = 3, **kw):
    return client.chat.completions.create(
        model=MODEL, max_tokens=max_tokens, temperature=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Describe"}, *parts]}],
        **kw)


def refused(client, *parts) -> dict:
    with pytest.raises(openai.BadRequestError) as ei:
        ask(client, *parts)
    body = ei.value.body
    return {"error": body.get("error", body)}  # the client may unwrap the error object


def test_image_tokens_counted_in_prompt(vision_server, tiny_dir):
    client = openai_client(vision_server)
    config = json.loads((tiny_dir / "gemma3" / "config.json").read_text())
    # "\n\n" <start_of_image> + image tokens + <end_of_image> "\n\n"
    per_image = config["mm_tokens_per_image"] + 4
    text_only = ask(client)
    one = ask(client, image_part(data_url(png_bytes(50, 40))))
    two = ask(client, image_part(data_url(png_bytes(50, 40))),
              image_part(data_url(jpeg_bytes(30, 60), "image/jpeg")))
    assert one.usage.prompt_tokens == text_only.usage.prompt_tokens + per_image
    assert two.usage.prompt_tokens == text_only.usage.prompt_tokens + 2 * per_image
    assert one.choices[0].finish_reason == "length" and one.usage.completion_tokens == 3


def test_image_streaming_with_usage(vision_server):
    client = openai_client(vision_server)
    chunks = list(ask(client, image_part(data_url(png_bytes(20, 20))), stream=True,
                      stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 3
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)


def test_local_file_only_under_media_dir(vision_server, media_dir, tmp_path):
    client = openai_client(vision_server)
    ok = ask(client, image_part(f"file://{media_dir / 'red.png'}"))
    assert ok.usage.prompt_tokens > ask(client).usage.prompt_tokens
    outside = tmp_path / "x.png"
    outside.write_bytes(png_bytes(4, 4))
    for url in (f"file://{outside}", f"file://{media_dir}/../{outside.name}",
                f"file://{media_dir}/missing.png"):
        err = refused(client, image_part(url))["error"]
        assert err["param"] == "messages[0].content[1].image_url.url"


BAD = {
    "corrupt base64": ("data:image/png;base64,@@@not-base64", "image_url.url"),
    "corrupt image": (data_url(b"\x89PNG\r\n\x1a\nthis is not a png"), ""),
    "wrong MIME": (data_url(jpeg_bytes(8, 8), "image/png"), ""),
    "unsupported MIME": (data_url(png_bytes(8, 8), "image/tiff"), ""),
    "not an image MIME": (data_url(b"hello", "text/plain"), ""),
    "oversize bytes": (data_url(b"\x00" * 210_000), "image_url.url"),  # the guard's byte check
    "too many pixels": (data_url(png_bytes(1100, 1000)), ""),
    "decompression bomb": (data_url(png_bomb()), ""),
    "remote URL without the flag": ("https://example.com/cat.png", "image_url.url"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_images_are_400_naming_the_part(vision_server, case):
    url, suffix = BAD[case]
    err = refused(openai_client(vision_server), image_part(url))["error"]
    expected = "messages[0].content[1]" + (f".{suffix}" if suffix else "")
    assert err["param"] == expected, err
    assert err["type"] == "invalid_request_error"


def test_too_many_images(vision_server):
    img = image_part(data_url(png_bytes(8, 8)))
    err = refused(openai_client(vision_server), img, img, img)["error"]
    assert err["param"] == "messages[0].content[3]" and "too many images" in err["message"]


def test_audio_to_a_model_without_audio_tower(vision_server):
    part = {"type": "input_audio",
            "input_audio": {"data": base64.b64encode(wav_bytes(0.5)).decode(), "format": "wav"}}
    err = refused(openai_client(vision_server), part)["error"]
    assert err["param"] == "messages[0].content[1]" and "audio" in err["message"]
    r = httpx.post(f"{vision_server.base_url}/v1/audio/transcriptions",
                   files={"file": ("a.wav", wav_bytes(0.5), "audio/wav")},
                   data={"model": MODEL}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
