"""GET /metrics, GET /ready, GET /v1/alerts, GET /v1/monitoring/summary and the dashboard page."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from gemmakit.monitoring.monitor import Monitor, memory
from gemmakit.monitoring.readiness import ready_body

router = APIRouter()
DASHBOARD = resources.files("gemmakit.monitoring") / "dashboard"


def _monitor(request: Request) -> Monitor:
    return request.app.state.monitor


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    body, content_type = _monitor(request).metrics.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness (Kubernetes readinessProbe): 200 healthy or degraded, 503 unhealthy/loading."""
    monitor = _monitor(request)
    registry = request.app.state.runtime
    # The probe runs on the first loaded model (held in use while it runs); with none loaded
    # after start-up (unloaded for idleness), the server is ready: a request loads one.
    entry = next((e for e in (registry.acquire_loaded(n) for n in registry.names)
                  if e is not None), None)
    if entry is None:
        if registry.starting or registry.load_error or len(registry.names) == 1 \
                and registry.first.state != "unloaded":
            return JSONResponse({"status": "unhealthy", "model": registry.model_name,
                                 "errors": ["the model failed to load" if registry.load_error
                                            else "the model is still loading"]},
                                status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "healthy", "model": registry.model_name,
                             "loaded": False, "memory": memory()})
    request.scope["state"].setdefault("releases", []).append(
        lambda: registry.release_probe(entry))
    pipeline = entry.pipeline
    assert pipeline is not None
    result = await monitor.readiness.check(pipeline)
    body = ready_body(result, entry.name, memory(), monitor.alerts.active(),
                      monitor.readiness.clock())
    return JSONResponse(body, status_code=503 if result.status == "unhealthy" else 200)


@router.get("/v1/alerts")
async def alerts(request: Request) -> dict[str, Any]:
    """Alerts firing now, every rule's last value, and recent fire/resolve events."""
    a = _monitor(request).alerts
    return {"object": "list", "data": a.active(),
            "rules": [st.as_dict() for st in a.states], "events": list(a.history)}


@router.get("/v1/monitoring/summary")
async def summary(request: Request,
                  window: float = Query(default=60.0, gt=0, le=86400)) -> dict[str, Any]:
    """Live figures over the last `window` seconds (what the dashboard draws)."""
    return _monitor(request).summary(window)


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(str(DASHBOARD / "index.html"), headers={"cache-control": "no-cache"})


def mount_dashboard(app: FastAPI) -> None:
    app.mount("/dashboard/static", StaticFiles(directory=str(DASHBOARD)), name="dashboard")

