"""Shared test fixtures: a fake engine with queued outputs (the layers above the engine are tested
against it) and a factory for the real FastAPI app served by that engine.

Nothing here imports llama_cpp or loads a model.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest

from gemmakit.engines.base import Engine
from gemmakit.types import (
    Capabilities,
    Chunk,
    ChunkStats,
    EngineHealth,
    FinishReason,
    GenerationRequest,
    ImagePart,
    MediaEncoding,
    TokenLogprob,
)

# Control tokens get small ids (as in Gemma's vocabulary: <eos> 1, <bos> 2, <start_of_turn> 105,
# <end_of_turn> 106); every other character is one token, id CHAR_BASE + ord(char).
SPECIAL_IDS: dict[str, int] = {
    "<pad>": 0,
    "<eos>": 1,
    "<bos>": 2,
    "<start_of_turn>": 105,
    "<end_of_turn>": 106,
    "<start_of_image>": 107,
    "<start_of_audio>": 108,
}
CHAR_BASE = 1000
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_IDS) + ")")
_ID_TO_SPECIAL = {v: k for k, v in SPECIAL_IDS.items()}


def _char(token: int) -> str:
    if token < CHAR_BASE:
        return ""
    code = token - CHAR_BASE
    return "\ufffd" if 0xD800 <= code <= 0xDFFF else chr(code)


class FakeEngine(Engine):
    """Implements the `gemmakit.engines.base.Engine` contract with scripted replies.

    - `tokenize`: one id per character; with ``special=True`` control-token markup such as
      ``<start_of_turn>`` becomes its single control id. Never adds BOS.
    - `stream`: each call takes the next queued reply (`queue_text`, `queue_chunks`,
      `queue_error`); with nothing queued it yields `default_reply`. Every request is recorded in
      `requests`.
    """

    name = "fake"

    def __init__(self, *, context_length: int = 256,
                 capabilities: Capabilities | None = None) -> None:
        self.capabilities = capabilities or Capabilities()
        self.context_length = context_length
        self.n_vocab = CHAR_BASE + 0x110000
        self.requests: list[GenerationRequest] = []
        self.default_reply: list[Chunk | BaseException] = self.text_reply("ok")
        self.healthy = True
        self.closed = False
        self.delay_s = 0.0
        """Seconds between chunks (a slow engine, for cancellation tests)."""
        self.cancelled: list[str] = []
        """Request ids whose streams were closed before their last chunk."""
        self._replies: collections.deque[list[Chunk | BaseException]] = collections.deque()

    # --- the engine contract ----------------------------------------------------------------
    @classmethod
    def from_settings(cls, model: Any, settings: Any) -> FakeEngine:
        return cls()

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        if not special:
            return [CHAR_BASE + ord(c) for c in text]
        ids: list[int] = []
        for piece in _SPECIAL_RE.split(text):
            if piece in SPECIAL_IDS:
                ids.append(SPECIAL_IDS[piece])
            else:
                ids.extend(CHAR_BASE + ord(c) for c in piece)
        return ids

    def encode_media(self, part: Any) -> MediaEncoding:
        """Media parts (engines with vision/audio): the placeholder plus four stand-in tokens,
        the part's bytes as its "features"."""
        marker = "<start_of_image>" if isinstance(part, ImagePart) else "<start_of_audio>"
        return MediaEncoding(token_ids=(SPECIAL_IDS[marker], *([CHAR_BASE] * 4)),
                             features=part.data)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        reply = self._replies.popleft() if self._replies else self.default_reply
        if request.sampling.prompt_logprobs is not None:
            reply = self._scored(request, reply)
        done = False
        try:
            for item in reply:
                await asyncio.sleep(self.delay_s)  # a real engine yields between tokens
                if isinstance(item, BaseException):
                    done = True
                    raise item
                done = isinstance(item, Chunk) and item.finish_reason is not None
                yield item
        finally:
            if not done:
                self.cancelled.append(request.request_id)

    @staticmethod
    def _scored(request: GenerationRequest, reply: list[Chunk | BaseException]
                ) -> list[Chunk | BaseException]:
        """A scored prompt (`prompt_logprobs`): every prompt token after the first at logprob
        -1.0 on the first chunk; with max_tokens 0 that chunk ends the reply."""
        scored = [TokenLogprob(_char(t), -1.0, list(_char(t).encode()))
                  for t in request.prompt_tokens[1:]]
        if request.sampling.max_tokens == 0:
            return [Chunk(finish_reason="length", prompt_logprobs=scored,
                          stats=ChunkStats(prompt_tokens=len(request.prompt_tokens)))]
        first = reply[0]
        if not isinstance(first, Chunk):
            return reply
        return [dataclasses.replace(first, prompt_logprobs=scored), *reply[1:]]

    def health(self) -> EngineHealth:
        return EngineHealth(ok=self.healthy, detail="" if self.healthy else "broken")

    async def aclose(self) -> None:
        self.closed = True

    # --- scripting ----------------------------------------------------------------------------
    @staticmethod
    def text_reply(*pieces: str, finish_reason: FinishReason = "stop") -> list[Chunk | BaseException]:
        """One chunk per piece (one token each); the last carries finish_reason and stats."""
        chunks: list[Chunk | BaseException] = [
            Chunk(text=p, token_ids=[CHAR_BASE + i]) for i, p in enumerate(pieces)]
        chunks.append(Chunk(finish_reason=finish_reason,
                            stats=ChunkStats(completion_tokens=len(pieces))))
        return chunks

    def queue_text(self, *pieces: str, finish_reason: FinishReason = "stop") -> None:
        self._replies.append(self.text_reply(*pieces, finish_reason=finish_reason))

    def queue_chunks(self, chunks: Sequence[Chunk | BaseException]) -> None:
        self._replies.append(list(chunks))

    def queue_error(self, error: BaseException, *, after: Sequence[str] = ()) -> None:
        """The next stream yields `after` as text chunks, then raises `error`."""
        self._replies.append([*(Chunk(text=p, token_ids=[CHAR_BASE]) for p in after), error])

    # --- helpers for assertions ---------------------------------------------------------------
    @staticmethod
    def detokenize(ids: Sequence[int]) -> str:
        """Control tokens as their markup; an id below CHAR_BASE that names none renders as
        nothing, and one that stands for a surrogate code point as U+FFFD (as a real tokenizer
        decodes bytes that are not UTF-8)."""
        return "".join(_ID_TO_SPECIAL[i] if i in _ID_TO_SPECIAL else _char(i) for i in ids)

    @staticmethod
    def count_special(ids: Sequence[int], token: str) -> int:
        return sum(1 for i in ids if i == SPECIAL_IDS[token])


@contextlib.contextmanager
def uvicorn_thread(app: Any, timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL once
    /health answers 200, stops the server after."""
    import httpx
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    while httpx.get(f"{base_url}/health").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def fake_engine_class() -> type[FakeEngine]:
    return FakeEngine


def _wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """``wait_until(predicate, timeout=5.0)``: poll until true, else fail the test."""
    return _wait_until


@pytest.fixture
def make_client() -> Iterator[Callable[..., Any]]:
    """Factory: ``make_client(engine, model_name=..., max_body_bytes=..., load_engine=...,
    wait=True)`` builds the real app with `create_app`, enters a TestClient (so the lifespan
    runs) and, unless ``wait=False``, waits until /health says the engine is loaded."""
    from fastapi.testclient import TestClient

    from gemmakit.server.app import create_app

    clients: list[Any] = []

    def factory(engine: Any = None, *, model_name: str = "gemma-test",
                load_engine: Callable[[], Any] | None = None, wait: bool = True,
                **app_kwargs: Any) -> Any:
        if load_engine is None:
            eng = engine if engine is not None else FakeEngine()

            def load_engine() -> Any:
                return eng

        app = create_app(model_name, load_engine, **app_kwargs)
        # raise_server_exceptions=False: a 500 must be checked as the client sees it.
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        if wait:
            _wait_until(lambda: client.get("/health").status_code == 200)
        return client

    yield factory
    for c in reversed(clients):
        c.__exit__(None, None, None)


@pytest.fixture(autouse=True)
def _private_home(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
                  ) -> None:
    """Apps built in tests keep their state (usage ledger, keys) in a temporary data directory,
    never in the real one."""
    import os

    if "GEMMAKIT_HOME" not in os.environ:
        monkeypatch.setenv("GEMMAKIT_HOME", str(tmp_path_factory.mktemp("home")))


def _install_redis_server() -> str | None:
    """redis-server from the system package manager (CI runs as root); None if impossible."""
    import shutil
    import subprocess

    exe = shutil.which("redis-server")
    if exe is None and shutil.which("apt-get") is not None:
        for cmd in (["apt-get", "install", "-y", "-q", "redis-server"],
                    ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "redis-server"]):
            subprocess.run(cmd, capture_output=True, timeout=600,
                           env={**__import__("os").environ, "DEBIAN_FRONTEND": "noninteractive"})
            exe = shutil.which("redis-server")
            if exe is not None:
                break
    return exe


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port for the session (installed if missing)."""
    import socket
    import subprocess

    exe = _install_redis_server()
    if exe is None:
        pytest.skip("redis-server is not installed and cannot be installed here")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    _wait_until(lambda: _pings(client), timeout=20)
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=20)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def _postgres_bindir() -> str | None:
    """The directory of initdb/pg_ctl: on PATH, Debian's /usr/lib/postgresql/*/bin, or installed
    from the system package manager (CI runs as root); None if impossible."""
    import glob
    import os
    import shutil
    import subprocess

    def find() -> str | None:
        exe = shutil.which("initdb")
        if exe is not None:
            return os.path.dirname(os.path.realpath(exe))
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                       key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
        return os.path.dirname(found[-1]) if found else None

    bindir = find()
    if bindir is None and shutil.which("apt-get") is not None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postgresql"]):
            subprocess.run(cmd, capture_output=True, timeout=900, env=env)
        bindir = find()
    return bindir


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server for the session (installed if missing): `initdb` into a temporary
    directory, `pg_ctl start` on a free loopback port with its unix socket in that directory.
    PostgreSQL refuses to run as root, so as root it runs as `nobody`. Yields the server's URL
    without a database (`postgresql://gemmakit@127.0.0.1:PORT`); see `postgres_url`."""
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed and cannot be installed here")
    as_user: list[str] = []
    # Not under pytest's temporary root: that is private to root, and the server's user must
    # own its data directory.
    workdir = tempfile.mkdtemp(prefix="gemmakit-pg-")
    if os.geteuid() == 0:
        import pwd

        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root and there is no unprivileged user 'nobody' to run "
                        "PostgreSQL as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL unprivileged")
        os.chown(workdir, nobody.pw_uid, nobody.pw_gid)
        as_user = ["runuser", "-u", "nobody", "--"]
    data = os.path.join(workdir, "data")
    init = subprocess.run([*as_user, f"{bindir}/initdb", "-D", data, "-U", "gemmakit",
                           "--auth=trust", "-E", "UTF8", "--no-locale"],
                          capture_output=True, text=True, timeout=300)
    if init.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Durability off: a test database need not survive a power cut, and the machine is shared.
    options = (f"-p {port} -h 127.0.0.1 -k {workdir} -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off -c max_connections=200")
    start = subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-l",
                            os.path.join(workdir, "server.log"), "-w", "-t", "120", "-o", options,
                            "start"], capture_output=True, text=True, timeout=180)
    if start.returncode != 0:
        log_file = os.path.join(workdir, "server.log")
        log_text = open(log_file).read()[-500:] if os.path.exists(log_file) else ""
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {start.stderr.strip()} {log_text}")
    try:
        yield f"postgresql://gemmakit@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server for one test, dropped after:
    `postgresql://gemmakit@127.0.0.1:PORT/t_<random>`."""
    import secrets

    import psycopg

    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield f"{postgres_server}/{name}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
