"""GET /api/ps: the models loaded now, in the shape of Ollama's `ps` (what `gemmakit ps`
prints): `name`, `model`, `size` (bytes it counts against --max-memory), `size_vram` (0: CPU),
`context_length`, `expires_at` (ISO 8601; null while in use or kept for ever), plus gemmakit's
`slots`, `state`, requests in flight and the keep-alive. An API key sees only its models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gemmakit.server.routes.models import visible

router = APIRouter()


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    registry = request.app.state.runtime
    models = []
    for m in registry.ps():
        if not visible(request, m["name"]):
            continue
        models.append({"name": m["name"], "model": m["name"], "size": m["size"],
                       "size_vram": 0, "digest": "", "details": {"engine": m["engine"]},
                       **{k: v for k, v in m.items() if k not in ("name", "size", "engine")}})
    return {"models": models,
            "limits": {"max_loaded_models": registry.max_loaded,
                       "max_memory_bytes": registry.budget_bytes,
                       "keep_alive_seconds": registry.keep_alive,
                       "resident_bytes": registry.resident_bytes()}}
