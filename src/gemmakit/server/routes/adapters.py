"""POST /v1/adapters/load and /v1/adapters/unload: serve a stored LoRA adapter by name, or stop
serving it (vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, with `lora_name`). They are
/v1 routes, so with --auth they need a key, and a key scoped to some models may only load or
unload adapters its scope names (403)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from gemmakit.errors import UnsupportedError
from gemmakit.safety.auth import PermissionDeniedError

router = APIRouter()
ADMIN_ROUTE = "x-gemmakit-admin"
ADMIN_ROUTE_MARK = {ADMIN_ROUTE: True}
"""Administrative POST /v1 routes: no generation, so not pipeline routes (the route contract
test reads this mark)."""


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=64)
    """The adapter's name in the store ($GEMMAKIT_HOME/adapters/NAME)."""


def _check_scope(request: Request, name: str) -> None:
    key = request.scope["state"].get("key")
    if key is not None and not key.allows_model(name):
        raise PermissionDeniedError(f"This API key may not use the model '{name}'.",
                                    param="lora_name")


def _adapters(request: Request) -> Any:
    adapters = request.app.state.runtime.adapters
    if adapters is None:
        raise UnsupportedError("this server serves no adapters")
    return adapters


@router.post("/v1/adapters/load", openapi_extra=ADMIN_ROUTE_MARK)
async def load_adapter(body: AdapterRequest, request: Request) -> dict[str, Any]:
    _check_scope(request, body.lora_name)
    served = await _adapters(request).load(body.lora_name)
    return {"object": "adapter", "id": body.lora_name, "parent": served.base, "loaded": True}


@router.post("/v1/adapters/unload", openapi_extra=ADMIN_ROUTE_MARK)
async def unload_adapter(body: AdapterRequest, request: Request) -> dict[str, Any]:
    _check_scope(request, body.lora_name)
    await _adapters(request).unload(body.lora_name)
    return {"object": "adapter", "id": body.lora_name, "loaded": False}
