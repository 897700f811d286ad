"""GET /v1/models and GET /v1/models/{id}"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gemmakit.errors import ModelNotFoundError

router = APIRouter()


def _card(runtime: Any) -> dict[str, Any]:
    card = {"id": runtime.model_name, "object": "model", "created": runtime.created,
            "owned_by": "gemmakit"}
    if runtime.engine is not None:
        card["context_length"] = runtime.engine.context_length
        card["engine"] = runtime.engine.name
    return card


def _visible(request: Request, model: str) -> bool:
    """Whether the caller may see `model`: an API key scoped to some models sees only those."""
    key = request.scope["state"].get("key")  # set by the edge for an authenticated caller
    return key is None or key.allows_model(model)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    runtime = request.app.state.runtime
    cards = [_card(runtime)] if _visible(request, runtime.model_name) else []
    return {"object": "list", "data": cards}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    runtime = request.app.state.runtime
    if model_id != runtime.model_name or not _visible(request, model_id):
        # A model outside the key's scope reads as absent, as OpenAI answers for a model an
        # organization cannot use.
        raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model")
    return _card(runtime)
