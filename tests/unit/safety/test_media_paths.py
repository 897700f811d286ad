"""Remote media (--allow-remote-media) against a loopback HTTP server started here, file media
and model paths confined to allowed directories (no `..` or symlink escapes)."""

from __future__ import annotations

import asyncio
import base64
import http.server
import threading
from pathlib import Path

import pytest

from gemmakit.errors import InvalidRequestError
from gemmakit.safety.media import MediaPolicy, resolve_url
from gemmakit.safety.paths import PathNotAllowedError, confine

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the stdlib's name)
        routes = {
            "/img.png": (200, {"Content-Type": "image/png"}, PNG),
            "/big.png": (200, {"Content-Type": "image/png"}, b"\x00" * 5000),
            "/page": (200, {"Content-Type": "text/html"}, b"<html></html>"),
            "/to-file": (302, {"Location": "file:///etc/passwd"}, b""),
            "/to-img": (302, {"Location": "/img.png"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
            "/missing": (404, {}, b""),
        }
        status, headers, body = routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def origin():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def resolve(url, **kw):
    return asyncio.run(resolve_url(url, MediaPolicy(**kw), "p"))


def test_fetches_an_image_as_a_data_url(origin):
    url = resolve(f"{origin}/img.png", allow_remote=True, allow_private=True)
    assert url == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert resolve(f"{origin}/to-img", allow_remote=True, allow_private=True) == url


@pytest.mark.parametrize("path,kw,words", [
    ("/img.png", {}, "disabled"),                                    # remote media off
    ("/img.png", {"allow_remote": True}, "private"),                 # loopback is private
    ("/big.png", {"allow_remote": True, "allow_private": True, "max_bytes": 1000}, "limit"),
    ("/page", {"allow_remote": True, "allow_private": True}, "not return an image"),
    ("/to-file", {"allow_remote": True, "allow_private": True}, "not an http"),
    ("/loop", {"allow_remote": True, "allow_private": True}, "too many"),
    ("/missing", {"allow_remote": True, "allow_private": True}, "404"),
])
def test_remote_fetch_refusals(origin, path, kw, words):
    with pytest.raises(InvalidRequestError) as e:
        resolve(origin + path, **kw)
    assert words in e.value.message and e.value.param == "p"


def test_other_schemes_refused():
    with pytest.raises(InvalidRequestError):
        resolve("ftp://example.com/x.png", allow_remote=True)
    with pytest.raises(InvalidRequestError, match="disabled"):
        resolve("file:///etc/passwd")


def test_file_urls_only_inside_media_dir(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "ok.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    (media / "link.png").symlink_to(tmp_path / "secret.png")
    assert resolve(f"file://{media}/ok.png", media_dir=media).startswith("data:image/png;")
    for url in (f"file://{media}/../secret.png", f"file://{media}/link.png",
                f"file://{tmp_path}/secret.png"):
        with pytest.raises(PathNotAllowedError):
            resolve(url, media_dir=media)


def test_confine_resolves_dotdot_and_symlinks(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    (root / "a.gguf").write_bytes(b"x")
    (tmp_path / "outside.gguf").write_bytes(b"x")
    (root / "sneaky.gguf").symlink_to(tmp_path / "outside.gguf")
    (root / "sub").symlink_to(tmp_path)
    assert confine(root / "a.gguf", [root]) == (root / "a.gguf").resolve()
    for bad in (root / ".." / "outside.gguf", root / "sneaky.gguf", root / "sub" / "outside.gguf",
                root / "missing.gguf"):
        with pytest.raises(PathNotAllowedError):
            confine(bad, [root])


def test_model_path_outside_model_dirs_fails_before_loading(tmp_path, monkeypatch):
    from gemmakit.errors import ConfigError
    from gemmakit.settings import Settings

    root = tmp_path / "models"
    root.mkdir()
    (root / "m.gguf").write_bytes(b"x")
    (tmp_path / "evil.gguf").write_bytes(b"x")
    (root / "link.gguf").symlink_to(tmp_path / "evil.gguf")
    ok = Settings.load(model=str(root / "m.gguf"), model_dirs=[str(root)])
    assert Path(ok.model) == (root / "m.gguf").resolve()
    for bad in (root / ".." / "evil.gguf", root / "link.gguf"):
        with pytest.raises(ConfigError, match="outside"):
            Settings.load(model=str(bad), model_dirs=[str(root)])
    # catalog aliases are not paths
    assert Settings.load(model="gemma-3-270m", model_dirs=[str(root)]).model == "gemma-3-270m"


def test_app_fetches_remote_image_only_when_allowed(origin, make_client, fake_engine_class):
    from gemmakit.types import Capabilities

    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"{origin}/img.png"}}]}]}
    closed = make_client(fake_engine_class(capabilities=Capabilities(vision=True)),
                         model_name="m")
    r = closed.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages[0].content[1].image_url.url"
    engine = fake_engine_class(capabilities=Capabilities(vision=True))
    opened = make_client(engine, model_name="m", allow_remote_media=True,
                         remote_media_private=True)
    r = opened.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text  # fetched, then accepted as a data: URL
