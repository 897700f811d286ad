"""Image URLs other than `data:` ones, resolved before the request is converted to core types:

- `file://` URLs (or plain absolute paths) only under `--media-dir` (symlinks resolved first, so a
  link cannot lead outside it);
- `http(s)://` URLs only with `--allow-remote-media` (fetched with httpx: a time limit, at most
  `max_image_bytes` read, no more than 3 redirects).

Each resolved image is put back into the request as a `data:` URL, so the rest of the pipeline sees
one kind of image. Any refusal is a 400 naming the part."""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from gemmakit.errors import InvalidRequestError

if TYPE_CHECKING:
    from gemmakit.settings import Settings

FETCH_TIMEOUT_S = 10.0


async def inline_image_urls(messages: list[Any], settings: Settings) -> None:
    """Replace every non-data image URL in protocol `messages` by a data: URL (in place)."""
    for i, m in enumerate(messages):
        if not isinstance(m.content, list):
            continue
        for j, part in enumerate(m.content):
            image_url = getattr(part, "image_url", None)
            if image_url is None or image_url.url.startswith("data:"):
                continue
            param = f"messages[{i}].content[{j}].image_url.url"
            data, mime = await _load(image_url.url, settings, param)
            image_url.url = f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def _load(url: str, settings: Settings, param: str) -> tuple[bytes, str]:
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        if not settings.allow_remote_media:
            raise InvalidRequestError("remote image URLs are not fetched by this server (start "
                                      "it with --allow-remote-media); send the image as a "
                                      "base64 data: URL.", param=param)
        return await _fetch(url, settings.max_image_bytes, param)
    if parsed.scheme == "file" or (not parsed.scheme and url.startswith("/")):
        return _read_local(Path(unquote(parsed.path)), settings, param)
    raise InvalidRequestError(f"unsupported image URL scheme '{parsed.scheme or url[:16]}' "
                              "(use a base64 data: URL).", param=param)


def _read_local(path: Path, settings: Settings, param: str) -> tuple[bytes, str]:
    if settings.media_dir is None:
        raise InvalidRequestError("local image files are not readable by this server (start it "
                                  "with --media-dir DIR to allow files under DIR).", param=param)
    root = settings.media_dir.resolve()
    real = path.resolve()
    if not real.is_relative_to(root) or not real.is_file():
        # One message for "outside" and "missing": the reply must not reveal the file system.
        raise InvalidRequestError("no such image file under the server's media directory.",
                                  param=param)
    if real.stat().st_size > settings.max_image_bytes:
        raise InvalidRequestError(f"the image file is larger than {settings.max_image_bytes} "
                                  "bytes.", param=param)
    mime = mimetypes.guess_type(real.name)[0] or "application/octet-stream"
    return real.read_bytes(), mime


async def _fetch(url: str, limit: int, param: str) -> tuple[bytes, str]:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=True,
                                     max_redirects=3) as client:
            async with client.stream("GET", url) as r:
                if r.status_code != 200:
                    raise InvalidRequestError(f"fetching the image failed with HTTP "
                                              f"{r.status_code}.", param=param)
                body = bytearray()
                async for block in r.aiter_bytes():
                    body += block
                    if len(body) > limit:
                        raise InvalidRequestError(f"the image is larger than {limit} bytes.",
                                                  param=param)
                mime = r.headers.get("content-type", "").split(";")[0].strip()
                return bytes(body), mime or "application/octet-stream"
    except httpx.HTTPError as e:
        raise InvalidRequestError(f"fetching the image failed ({type(e).__name__}).",
                                  param=param) from None
