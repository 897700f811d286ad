"""GET /health: 200 once the models loaded at start-up are loaded and their engines alive, 503
before (or after a failure) — usable as a Kubernetes liveness/startup probe. A model unloaded
for idleness does not make the server unhealthy: it loads again on its next request."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    registry = request.app.state.runtime
    name = registry.model_name
    several = len(registry.names) > 1
    states = {e.name: e.state for e in registry.entries.values()}
    extra = {"models": states} if several else {}
    if registry.draining:
        return JSONResponse({"status": "draining", "model": name, **extra}, status_code=503,
                            headers={"Retry-After": "5"})
    failed = any(s == "failed" for s in states.values())
    if registry.starting or failed:
        status = "failed" if failed else "loading"
        return JSONResponse({"status": status, "model": name, **extra}, status_code=503,
                            headers={"Retry-After": "1"})
    loaded = registry.loaded()
    healths = [(e, e.engine.health()) for e in loaded if e.engine is not None]
    ok = all(h.ok for _, h in healths)
    body = {"status": "ok" if ok else "unhealthy", "model": name}
    first = registry.first
    if first.engine is not None:
        body["engine"] = first.engine.name
        body.update(first.engine.health_detail())  # the remote engine: its upstreams
    body["requests_running"] = sum(h.requests_running for _, h in healths)
    body["requests_waiting"] = sum(h.requests_waiting for _, h in healths)
    return JSONResponse({**body, **extra}, status_code=200 if ok else 503)
