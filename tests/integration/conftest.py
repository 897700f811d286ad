"""Integration fixtures: the real `gemmakit serve` with the bundled model on a free 127.0.0.1 port,
and the real llama.cpp engine in-process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

MODEL = "gemma-3-270m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gemmakit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory for the session: the bundled GGUF is assembled into it once."""
    shared = os.environ.get("GEMMAKIT_TEST_HOME")
    return Path(shared) if shared else tmp_path_factory.mktemp("gemmakit-home")


@pytest.fixture(scope="session")
def model_path(gemmakit_home: Path) -> Path:
    from gemmakit.catalog.bundled import ensure_bundled

    return ensure_bundled(gemmakit_home / "models", progress=False)


class Server:
    def __init__(self, proc: subprocess.Popen, base_url: str, log_path: Path) -> None:
        self.proc, self.base_url, self.log_path = proc, base_url, log_path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(home: Path, tmp: Path, *extra: str, env: dict[str, str] | None = None,
                 wait: bool = True) -> Server:
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    cmd = [sys.executable, "-m", "gemmakit", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--context-length", "4096", *extra]
    proc = subprocess.Popen(cmd, env={**os.environ, "GEMMAKIT_HOME": str(home), **(env or {})},
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    if wait:
        wait_healthy(server)
    return server


def wait_healthy(server: Server, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{server.log_text()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"server not healthy:\n{server.log_text()}")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()


@pytest.fixture(scope="session")
def server(gemmakit_home: Path, model_path: Path, tmp_path_factory) -> Iterator[Server]:
    s = start_server(gemmakit_home, tmp_path_factory.mktemp("server"))
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def client(server: Server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def engine(model_path: Path):
    """The real llama.cpp engine, in-process (small context for speed)."""
    import asyncio

    from gemmakit.engines.llamacpp import LlamaCppEngine

    eng = LlamaCppEngine(model_path, context_length=2048)
    yield eng
    asyncio.run(eng.aclose())
