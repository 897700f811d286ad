"""GET /v1/models and GET /v1/models/{id}: every served model, loaded or not, with its state
(`status`: loaded / loading / unloaded / failed, resident size, context, slots, expiry)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gemmakit.errors import ModelNotFoundError
from gemmakit.server.models_registry import ModelEntry

router = APIRouter()


def card(entry: ModelEntry) -> dict[str, Any]:
    c: dict[str, Any] = {"id": entry.name, "object": "model", "created": entry.created,
                         "owned_by": "gemmakit"}
    if entry.context_length is not None:
        c["context_length"] = entry.context_length
    if entry.engine is not None:
        c["engine"] = entry.engine.name
    c["status"] = entry.status()
    return c


def visible(request: Request, model: str) -> bool:
    """Whether the caller may see `model`: an API key scoped to some models sees only those."""
    key = request.scope["state"].get("key")  # set by the edge for an authenticated caller
    return key is None or key.allows_model(model)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    registry = request.app.state.runtime
    cards = [card(e) for e in registry.entries.values() if visible(request, e.name)]
    if registry.adapters is not None:
        cards += [adapter_card(registry, n, parent) for n, parent in registry.adapters.cards()
                  if visible(request, n)]
    return {"object": "list", "data": cards}


def adapter_card(registry: Any, name: str, parent: str) -> dict[str, Any]:
    """An adapter as vLLM lists a LoRA module: its own id, `parent` its base model."""
    base = card(registry.entries[parent])
    return {"id": name, "object": "model", "created": base["created"], "owned_by": "gemmakit",
            "root": name, "parent": parent, **{k: base[k] for k in ("context_length", "engine")
                                                if k in base}}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    registry = request.app.state.runtime
    entry = registry.get(model_id)
    if entry is None and registry.adapters is not None and visible(request, model_id):
        parents = dict(registry.adapters.cards())
        if model_id in parents:
            return adapter_card(registry, model_id, parents[model_id])
    if entry is None or not visible(request, model_id):
        # A model outside the key's scope reads as absent, as OpenAI answers for a model an
        # organization cannot use.
        raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model")
    return card(entry)
