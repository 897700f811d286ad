"""GET /health: 200 once the model is loaded and the engine is alive, 503 before (or after a
failure) — usable as a Kubernetes liveness/startup probe."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    runtime = request.app.state.runtime
    if runtime.draining:
        return JSONResponse({"status": "draining", "model": runtime.model_name}, status_code=503,
                            headers={"Retry-After": "5"})
    if runtime.engine is None:
        status = "failed" if runtime.load_error else "loading"
        return JSONResponse({"status": status, "model": runtime.model_name}, status_code=503,
                            headers={"Retry-After": "1"})
    h = runtime.engine.health()
    body = {"status": "ok" if h.ok else "unhealthy", "model": runtime.model_name,
            "engine": runtime.engine.name, "requests_running": h.requests_running,
            "requests_waiting": h.requests_waiting}
    return JSONResponse(body, status_code=200 if h.ok else 503)
