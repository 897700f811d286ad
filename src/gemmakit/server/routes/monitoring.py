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
    runtime = request.app.state.runtime
    if runtime.pipeline is None:
        return JSONResponse({"status": "unhealthy", "model": runtime.model_name,
                             "errors": ["the model failed to load" if runtime.load_error
                                        else "the model is still loading"]},
                            status_code=503, headers={"Retry-After": "1"})
    result = await monitor.readiness.check(runtime.pipeline)
    body = ready_body(result, runtime.model_name, memory(), monitor.alerts.active(),
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

