"""`gemmakit batch INPUT.jsonl -o OUTPUT.jsonl`: an OpenAI Batch file through the same server
stack and scheduler as `gemmakit serve`, in-process (the app is called over ASGI, no socket), so
validation, errors and response bodies are exactly the HTTP API's.

Input lines: {"custom_id": str, "method": "POST", "url": "/v1/chat/completions" |
"/v1/completions", "body": {...}}. Every input line gives one output line (OpenAI's batch output
shape); a line that cannot run gets an `error` instead of a `response`. Output is appended as
results arrive and re-running skips what the output already holds, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from gemmakit.cli.common import ENGINE_FLAGS, load_settings, settings_flags

HELP = "Run an OpenAI Batch-format JSONL file through the engine (resumable)."
URLS = ("/v1/chat/completions", "/v1/completions")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="OpenAI Batch input file (JSONL).")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="Output JSONL; lines already in it are skipped (resume).")
    p.add_argument("--concurrency", type=int, default=None,
                   help="Requests in flight (default: --parallel plus --max-queue).")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")
    settings_flags(p, (*ENGINE_FLAGS, "parallel", "max_queue", "prefill_chunk",
                       "served_model_name"))


def _key(line_no: int, custom_id: Any) -> str:
    return f"id:{custom_id}" if isinstance(custom_id, str) else f"line:{line_no}"


def _done_keys(output: Path) -> set[str]:
    done = set()
    if output.exists():
        for raw in output.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # a line cut by an interruption: that request runs again
            done.add(_key(rec.get("line", 0), rec.get("custom_id")))
    return done


def _parse(line_no: int, raw: str, seen: set[str]) -> tuple[str, Any, dict | None, str | None]:
    """-> (key, custom_id, request or None, error message or None)"""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        return _key(line_no, None), None, None, f"line {line_no} is not valid JSON: {e.msg}"
    if not isinstance(obj, dict):
        return _key(line_no, None), None, None, f"line {line_no} is not a JSON object"
    cid = obj.get("custom_id")
    key = _key(line_no, cid)
    if not isinstance(cid, str) or not cid:
        return key, None, None, "custom_id must be a non-empty string"
    if key in seen:
        return _key(line_no, None), cid, None, f"duplicate custom_id '{cid}'"
    if obj.get("method", "POST") != "POST":
        return key, cid, None, "method must be POST"
    if obj.get("url") not in URLS:
        return key, cid, None, f"url must be one of {', '.join(URLS)}"
    body = obj.get("body")
    if not isinstance(body, dict):
        return key, cid, None, "body must be a JSON object"
    if body.get("stream"):
        return key, cid, None, "streaming is not available in batch jobs"
    return key, cid, obj, None


async def _run(ns: argparse.Namespace) -> int:
    import httpx

    from gemmakit.server.app import app_from_settings

    settings = load_settings(ns)
    lines = ns.input.read_text(encoding="utf-8").splitlines()
    done = _done_keys(ns.output)
    jobs: list[tuple[int, str, Any, dict | None, str | None]] = []
    seen: set[str] = set()
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue  # a blank line is no request
        key, cid, req, err = _parse(i, raw, seen)
        seen.add(key)
        if key not in done:
            jobs.append((i, key, cid, req, err))
    skipped = sum(1 for raw in lines if raw.strip()) - len(jobs)

    app = app_from_settings(settings)
    runtime = app.state.runtime
    ok = failed = 0
    out = ns.output.open("a", encoding="utf-8")

    def record(line_no: int, cid: Any, response: dict | None, error: dict | None) -> None:
        out.write(json.dumps({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": cid,
                              "line": line_no, "response": response, "error": error},
                             ensure_ascii=False) + "\n")
        out.flush()

    async with app.router.lifespan_context(app):
        while runtime.engine is None and runtime.load_error is None:
            await asyncio.sleep(0.05)
        if runtime.load_error is not None:
            print("gemmakit: error: the model failed to load", file=sys.stderr)
            return 2
        limit = ns.concurrency or (settings.parallel + settings.max_queue)
        sem = asyncio.Semaphore(max(1, limit))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gemmakit",
                                     timeout=None) as client:
            progress = _Progress(len(jobs), enabled=not ns.no_progress)

            async def one(line_no: int, cid: Any, req: dict | None, err: str | None) -> None:
                nonlocal ok, failed
                if err is not None:
                    record(line_no, cid, None, {"code": "invalid_request", "message": err})
                    failed += 1
                    progress.advance()
                    return
                assert req is not None
                async with sem:
                    while True:
                        r = await client.post(req["url"], json=req["body"])
                        if r.status_code != 429:
                            break
                        await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                body = r.json()
                record(line_no, cid, {"status_code": r.status_code,
                                      "request_id": r.headers.get("x-request-id"),
                                      "body": body}, None)
                if r.status_code == 200:
                    ok += 1
                else:
                    failed += 1
                progress.advance()

            with progress:
                await asyncio.gather(*(one(i, cid, req, err) for i, _k, cid, req, err in jobs))
    out.close()
    print(f"{ok} succeeded, {failed} failed, {skipped} already done -> {ns.output}",
          file=sys.stderr)
    return 0


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._p = Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), console=Console(stderr=True))
            self._p.__enter__()
            self._task = self._p.add_task("batch", total=self.total)
        return self

    def advance(self) -> None:
        if self.enabled:
            self._p.advance(self._task)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._p.__exit__(*exc)


def run(ns: argparse.Namespace) -> int:
    return asyncio.run(_run(ns))
