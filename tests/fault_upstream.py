"""A fault-injecting OpenAI-compatible upstream, for the remote engine's tests only.

It answers `/v1/models` (as a gemmakit upstream), `/health` and a streamed `/v1/completions`
whose behaviour each request takes from a queue of `Fault`s (or `default`):

- "ok": `tokens` events of one token each, then a finish event, usage and [DONE];
- "429" / "500": that status with an OpenAI error body, before any event;
- "stall": nothing at all (no headers, no first byte) for `stall_s`;
- "stall_mid": `after` events, then nothing for `stall_s`;
- "cut": `after` events, then the connection is dropped without a last chunk (a crash);
- "error_event": `after` events, then an error event and [DONE] (a failure the upstream saw).

Token ids are those of the tests' FakeEngine vocabulary (one per character, CHAR_BASE + ord).
Every request body is recorded, and every stream the gateway closed before its end is counted in
`cancelled` (the server sees the client go away and stops generating).
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tests.conftest import CHAR_BASE

REPLY = "hello"


@dataclass
class Fault:
    mode: str = "ok"
    after: int = 2
    """Events sent before the fault ("stall_mid", "cut", "error_event")."""
    stall_s: float = 3600.0
    tokens: int = len(REPLY)
    delay_s: float = 0.0
    """Seconds between events ("ok")."""


class FaultUpstream:
    def __init__(self, name: str = "fault") -> None:
        self.name = name
        self.default = Fault()
        self.queue: collections.deque[Fault] = collections.deque()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        """Of the /health and /v1/models requests."""
        self.completion_headers: list[dict[str, str]] = []
        self.health_checks = 0
        self.health_status = 200
        self.cancelled = 0
        self.finished = 0
        self.lock = threading.Lock()

    def next_fault(self) -> Fault:
        with self.lock:
            return self.queue.popleft() if self.queue else self.default

    def app(self) -> Any:
        app = FastAPI()

        @app.get("/health")
        async def health(request: Request) -> Any:
            self.health_checks += 1
            self.headers.append(dict(request.headers))
            return JSONResponse({"status": "ok"}, status_code=self.health_status)

        @app.get("/v1/models")
        async def models(request: Request) -> Any:
            self.headers.append(dict(request.headers))
            return {"object": "list", "data": [{"id": self.name, "object": "model",
                                                "owned_by": "gemmakit",
                                                "context_length": 512}]}

        @app.get("/stats")
        async def stats() -> Any:
            return {"request_ids": [h.get("x-request-id") for h in self.completion_headers],
                    "prompts": [b["prompt"] for b in self.bodies],
                    "cancelled": self.cancelled, "finished": self.finished}

        @app.post("/v1/completions")
        async def completions(request: Request) -> Any:
            body = await request.json()
            self.bodies.append(body)
            self.completion_headers.append(dict(request.headers))
            fault = self.next_fault()
            if fault.mode in ("429", "500"):
                return JSONResponse({"error": {"message": f"injected {fault.mode}",
                                               "type": "server_error"}},
                                    status_code=int(fault.mode),
                                    headers={"Retry-After": "1"} if fault.mode == "429" else {})
            if fault.mode == "stall":
                await asyncio.sleep(fault.stall_s)
            return StreamingResponse(self._events(request, body, fault),
                                     media_type="text/event-stream")

        return app

    async def _events(self, request: Request, body: dict[str, Any], fault: Fault
                      ) -> AsyncIterator[bytes]:
        def event(obj: dict[str, Any]) -> bytes:
            return f"data: {json.dumps(obj)}\n\n".encode()

        n = min(fault.tokens, int(body.get("max_tokens") or fault.tokens))
        text = (REPLY * (n // len(REPLY) + 1))[:n]
        done = False
        try:
            for k, ch in enumerate(text):
                if fault.mode in ("stall_mid", "cut", "error_event") and k == fault.after:
                    if fault.mode == "stall_mid":
                        await asyncio.sleep(fault.stall_s)
                    if fault.mode == "cut":
                        raise ConnectionResetError("injected cut")
                    yield event({"error": {"message": "injected failure",
                                           "type": "server_error"}})
                    yield b"data: [DONE]\n\n"
                    done = True
                    return
                if fault.delay_s:
                    await asyncio.sleep(fault.delay_s)
                if await request.is_disconnected():  # as a real server stops generating
                    return
                choice = {"index": 0, "text": ch, "logprobs": None, "finish_reason": None,
                          "token_ids": [CHAR_BASE + ord(ch)]}
                yield event({"object": "text_completion", "choices": [choice], "usage": None})
            reason = "length" if n < fault.tokens else "stop"
            yield event({"object": "text_completion", "choices": [
                {"index": 0, "text": "", "logprobs": None, "finish_reason": reason,
                 "token_ids": []}], "usage": None})
            yield event({"object": "text_completion", "choices": [], "usage": {
                "prompt_tokens": len(body["prompt"]), "completion_tokens": n,
                "total_tokens": len(body["prompt"]) + n}})
            yield b"data: [DONE]\n\n"
            done = True
            self.finished += 1
        finally:
            if not done and fault.mode != "cut":
                self.cancelled += 1


def main() -> None:
    """`python -m tests.fault_upstream --port P [--tokens N] [--delay-s S]`: one in its own
    process (for SIGKILL / SIGSTOP tests)."""
    import argparse

    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="fault")
    ap.add_argument("--tokens", type=int, default=len(REPLY))
    ap.add_argument("--delay-s", type=float, default=0.0)
    ns = ap.parse_args()
    up = FaultUpstream(ns.name)
    up.default = Fault("ok", tokens=ns.tokens, delay_s=ns.delay_s)
    uvicorn.run(up.app(), host="127.0.0.1", port=ns.port, log_level="warning")


if __name__ == "__main__":
    main()
