"""Every error leaves the server as the OpenAI error object, mapped here and nowhere else:

    {"error": {"message": str, "type": str, "param": str | null, "code": str | null}}

Messages never carry stack traces, internal paths or prompt text; an unexpected failure is a 500
that names the request id, with the details in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gemmakit.errors import GemmakitError

log = logging.getLogger("gemmakit.server")

_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after",
              "function-before", "function-wrap", "json-or-python", "literal"}


def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    # A message may quote what the client sent (a model name): text that cannot be encoded, such
    # as a lone surrogate, is escaped so that the error itself can always be sent.
    return {"error": {"message": _encodable(message), "type": type_,
                      "param": None if param is None else _encodable(param), "code": code}}


def _encodable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(status: int, message: str, type_: str, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status,
                        headers=headers)


def gemmakit_error_body(e: GemmakitError) -> dict[str, Any]:
    return error_body(e.message, e.type, e.param, e.code)


def param_from_loc(loc: Sequence[Any]) -> str | None:
    """('body', 'messages', 0, 'content', 'str') -> 'messages[0].content'.

    Pydantic appends the union member it tried ('str', 'list[...]', a discriminator tag) to the
    location; the parameter is the path up to that point."""
    parts: list[str] = []
    items = list(loc)
    if items and items[0] == "body":
        items = items[1:]
    for item in items:
        if isinstance(item, int):
            if not parts:
                break
            parts[-1] += f"[{item}]"
            continue
        s = str(item)
        if any(c in s for c in "[](),") or s in _TYPE_TAGS or s.startswith("function-"):
            break
        parts.append(s)
    return ".".join(parts) or None


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        return error_response(400, "The request body is not valid JSON.",
                              "invalid_request_error", None, "invalid_json")
    param = param_from_loc(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        msg = "Field required"
    text = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(400, text, "invalid_request_error", param, "invalid_value")


def install(app: FastAPI) -> None:
    @app.exception_handler(GemmakitError)
    async def _gemmakit(request: Request, e: GemmakitError) -> JSONResponse:
        headers = e.headers
        if e.status == 500:
            rid = getattr(request.state, "request_id", "-")
            log.error("request %s failed: %s", rid, e.message)
            return error_response(e.status, f"{e.message} (request id {rid})", e.type, e.param,
                                  e.code, headers=headers)
        return JSONResponse(gemmakit_error_body(e), status_code=e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        return validation_error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return error_response(e.status_code, str(e.detail), "invalid_request_error", None, code,
                              headers=getattr(e, "headers", None))


def internal_error_body(request_id: str) -> dict[str, Any]:
    """The body of an unexpected failure: the request id, nothing else (details are logged)."""
    return error_body(f"The server had an internal error (request id {request_id}).",
                      "server_error", None, "internal_error")
