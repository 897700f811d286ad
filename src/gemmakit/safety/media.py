"""Media referenced by URL in a request. By default only `data:` URLs are accepted: fetching
arbitrary URLs on a client's behalf is server-side request forgery (SSRF).

With `--allow-remote-media`, http(s) URLs are fetched with httpx under limits: a byte cap (checked
while streaming, not after), a total time limit, at most 3 redirects each re-checked (http/https
only), image content types only, and — unless `--remote-media-private` — only hosts that resolve to
public addresses (no loopback, private, link-local or reserved ranges: cloud metadata endpoints,
internal services). `file://` URLs are read only from `--media-dir`, through `confine`.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from gemmakit.errors import InvalidRequestError
from gemmakit.safety.paths import confine
from gemmakit.safety.validation import RequestTooLargeError

MAX_REDIRECTS = 3


@dataclass(frozen=True)
class MediaPolicy:
    allow_remote: bool = False
    allow_private: bool = False
    media_dir: Path | None = None
    max_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 10.0


async def _check_host(host: str, policy: MediaPolicy, param: str) -> None:
    if policy.allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None,
                                                             type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InvalidRequestError("the image URL's host does not resolve.", param=param) from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if not ip.is_global or ip.is_multicast:
            raise InvalidRequestError("the image URL points at a private, loopback or reserved "
                                      "address, which this server does not fetch.", param=param)


async def _fetch_http(url: str, policy: MediaPolicy, param: str) -> tuple[bytes, str]:
    import httpx

    async with httpx.AsyncClient(follow_redirects=False, timeout=policy.timeout_s,
                                 trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidRequestError("the image URL (or a redirect) is not an http(s) URL.",
                                          param=param)
            await _check_host(parts.hostname, policy, param)
            async with client.stream("GET", url) as r:
                if r.is_redirect:
                    url = urljoin(url, r.headers.get("location", ""))
                    continue
                if r.status_code != 200:
                    raise InvalidRequestError(f"fetching the image failed with HTTP "
                                              f"{r.status_code}.", param=param)
                mime = r.headers.get("content-type", "").split(";")[0].strip().lower()
                if not mime.startswith("image/"):
                    raise InvalidRequestError("the URL did not return an image.", param=param)
                declared = r.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                    raise _too_large(policy, param)
                data = bytearray()
                async for block in r.aiter_bytes():
                    data += block
                    if len(data) > policy.max_bytes:
                        raise _too_large(policy, param)
                return bytes(data), mime
    raise InvalidRequestError("the image URL redirects too many times.", param=param)


def _too_large(policy: MediaPolicy, param: str) -> RequestTooLargeError:
    return RequestTooLargeError(f"the image is larger than the limit of {policy.max_bytes} bytes.",
                                param=param)


def _read_file(url: str, policy: MediaPolicy, param: str) -> tuple[bytes, str]:
    import mimetypes

    if policy.media_dir is None:
        raise InvalidRequestError("file:// media URLs are disabled on this server (see "
                                  "--media-dir).", param=param)
    path = confine(unquote(urlsplit(url).path), [policy.media_dir], param=param)
    if path.stat().st_size > policy.max_bytes:
        raise _too_large(policy, param)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not mime.startswith("image/"):
        raise InvalidRequestError("the file is not an image.", param=param)
    return path.read_bytes(), mime


async def resolve_url(url: str, policy: MediaPolicy, param: str) -> str:
    """A `data:` URL for `url` (unchanged if it already is one), or a 400 naming `param`."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return url
    if scheme == "file":
        data, mime = await asyncio.to_thread(_read_file, url, policy, param)
    elif scheme in ("http", "https"):
        if not policy.allow_remote:
            raise InvalidRequestError("remote image URLs are disabled on this server; send a "
                                      "base64 data: URL (or start it with --allow-remote-media).",
                                      param=param)
        try:
            data, mime = await asyncio.wait_for(_fetch_http(url, policy, param),
                                                policy.timeout_s)
        except TimeoutError:
            raise InvalidRequestError("fetching the image timed out.", param=param) from None
        except InvalidRequestError:
            raise
        except Exception as e:  # httpx transport errors: say what kind, not where
            raise InvalidRequestError(f"fetching the image failed ({type(e).__name__}).",
                                      param=param) from None
    else:
        raise InvalidRequestError("images must be data:, http(s): or file: URLs.", param=param)
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
