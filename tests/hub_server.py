"""A loopback Hugging Face Hub for tests: a tiny repository in the hub's URL layout, so the real
`huggingface_hub` client code runs against it (point HF_ENDPOINT at `HubServer.endpoint`).

- `GET /api/models/{repo}[/revision/{rev}]` — the model info with `siblings` (size, blobId and,
  for LFS files, lfs.sha256/size/pointerSize), as `HfApi.model_info(files_metadata=True)` reads.
- `HEAD|GET /{repo}/resolve/{rev}/{file}` — small files are served here with X-Repo-Commit and
  ETag (the git blob sha1); LFS files answer 302 to a second origin (the "CDN") with
  X-Repo-Commit, X-Linked-Etag (the sha256) and X-Linked-Size, as the hub does.
- The CDN serves bytes with Content-Length, Accept-Ranges and `Range: bytes=N-` (206).

Test controls: `corrupt[file] = bytes` serves other bytes than the listing's hash;
`cut_after = n` sends only n bytes of the next CDN download, then drops the connection and answers
500 to every later request until `cut_after` is reset; `requests` logs (method, path, Range).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    lfs: set[str]
    commit: str = "0123456789abcdef0123456789abcdef01234567"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


_SHA256: dict[int, tuple[bytes, str]] = {}


def sha256(data: bytes) -> str:
    """Hashed once per bytes object (the bundled model is 250 MB)."""
    hit = _SHA256.get(id(data))
    if hit is None or hit[0] is not data:
        hit = _SHA256[id(data)] = (data, hashlib.sha256(data).hexdigest())
    return hit[1]


@dataclass
class HubServer:
    repos: dict[str, Repo] = field(default_factory=dict)
    corrupt: dict[str, bytes] = field(default_factory=dict)
    cut_after: int | None = None
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    _broken: bool = False

    def __post_init__(self) -> None:
        self.hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("hub"))
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("cdn"))
        for s in (self.hub, self.cdn):
            s.daemon_threads = True
            threading.Thread(target=s.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.hub.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def heal(self) -> None:
        self.cut_after, self._broken = None, False

    def close(self) -> None:
        for s in (self.hub, self.cdn):
            s.shutdown()
            s.server_close()

    # --- answers -------------------------------------------------------------------------
    def info(self, repo_id: str) -> dict:
        repo = self.repos[repo_id]
        siblings = []
        for name, data in sorted(repo.files.items()):
            s: dict = {"rfilename": name, "size": len(data), "blobId": git_sha1(data)}
            if name in repo.lfs:
                s["lfs"] = {"sha256": sha256(data), "size": len(data),
                            "pointerSize": 134}
            siblings.append(s)
        return {"_id": "x", "id": repo_id, "modelId": repo_id, "sha": repo.commit,
                "private": False, "tags": [], "downloads": 0, "likes": 0, "siblings": siblings}

    def _handler(self, role: str) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _send(self, status: int, headers: dict[str, str], data: bytes = b"",
                      body: bool = True) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(data) if body else 0))
                self.end_headers()
                if body and data:
                    self.wfile.write(data)

            def _answer(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, f"{role}:{path}", self.headers.get("Range")))
                if hub._broken:
                    return self._send(500, {}, b"broken")
                if role == "cdn":
                    return self._cdn(path, body)
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    repo_id = "/".join(parts[2:4])
                    if repo_id not in hub.repos:
                        return self._send(404, {"X-Error-Code": "RepoNotFound",
                                                "X-Error-Message": "Repository not found"})
                    data = json.dumps(hub.info(repo_id)).encode()
                    return self._send(200, {"Content-Type": "application/json"}, data, body)
                repo_id = "/".join(parts[:2])
                if len(parts) < 5 or parts[2] != "resolve" or repo_id not in hub.repos:
                    return self._send(404, {"X-Error-Code": "RepoNotFound"})
                repo = hub.repos[repo_id]
                name = "/".join(parts[4:])
                if name not in repo.files:
                    return self._send(404, {"X-Error-Code": "EntryNotFound",
                                            "X-Repo-Commit": repo.commit})
                data = repo.files[name]
                common = {"X-Repo-Commit": repo.commit}
                if name in repo.lfs:
                    sha = sha256(data)
                    return self._send(302, {**common, "Location": f"{hub.cdn_url}/blobs/{sha}",
                                            "X-Linked-Etag": f'"{sha}"',
                                            "X-Linked-Size": str(len(data))}, body=False)
                self._send(200, {**common, "ETag": f'"{git_sha1(data)}"'},
                           hub.corrupt.get(name, data), body)

            def _cdn(self, path: str, body: bool) -> None:
                sha = path.rsplit("/", 1)[-1]
                found = [(n, d) for r in hub.repos.values() for n, d in r.files.items()
                         if sha256(d) == sha]
                if not found:
                    return self._send(404, {})
                name, data = found[0]
                data = hub.corrupt.get(name, data)
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha}"',
                           "Content-Length": str(len(data) - start)}
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self.send_response(206 if start else 200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if not body:
                    return
                chunk = data[start:]
                if hub.cut_after is not None:
                    hub._broken = True  # every later request fails until heal()
                    self.wfile.write(chunk[:hub.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        return Handler
