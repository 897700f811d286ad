"""GET /v1/usage: the calling key's usage over the last hour and its rate-limit state."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request

from gemmakit.safety.ratelimit import Limits, format_reset

router = APIRouter()


@router.get("/v1/usage")
async def usage(request: Request) -> dict[str, Any]:
    state = request.scope["state"]
    safety = request.app.state.safety
    key = state.get("key")
    out: dict[str, Any] = {"object": "usage", "key": key.name if key else None}
    if safety.ledger is not None:
        await asyncio.to_thread(safety.ledger.flush)  # rows of requests just finished
        since = time.time() - 3600
        w = await asyncio.to_thread(safety.ledger.window, key.name if key else None, since)
        out["last_hour"] = {**w, "total_tokens": w["prompt_tokens"] + w["completion_tokens"]}
    limits = Limits(key.rpm, key.tpm) if key is not None else Limits()
    out["limits"] = {"requests_per_minute": limits.rpm, "tokens_per_minute": limits.tpm}
    if key is not None and safety.limiter is not None and not limits.unlimited:
        d = await safety.limiter.acquire(key.name, limits, entry=f"{state['request_id']}:peek")
        now = time.time()
        out["remaining"] = {"requests": d.remaining_requests, "tokens": d.remaining_tokens}
        out["reset"] = {
            "requests": format_reset(d.reset_requests_s) if limits.rpm else None,
            "tokens": format_reset(d.reset_tokens_s) if limits.tpm else None,
            "requests_at": round(now + d.reset_requests_s, 3) if limits.rpm else None,
            "tokens_at": round(now + d.reset_tokens_s, 3) if limits.tpm else None,
        }
    return out
