"""Server-sent events in OpenAI's framing: one JSON object per `data:` line, then `data: [DONE]`.

An error after the stream has started cannot change the status code, so it is sent as a final
`data: {"error": …}` event before `[DONE]`; no stream ends without a final event."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette.sse import EventSourceResponse

from gemmakit.errors import GemmakitError
from gemmakit.server.errors import error_body, gemmakit_error_body

log = logging.getLogger("gemmakit.server")


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse_response(events: AsyncIterator[dict[str, Any]], request_id: str) -> EventSourceResponse:
    async def frames() -> AsyncIterator[dict[str, str]]:
        try:
            async for event in events:
                yield {"data": dumps(event)}
        except GemmakitError as e:
            yield {"data": dumps(gemmakit_error_body(e))}
        except Exception:
            log.exception("request %s failed while streaming", request_id)
            yield {"data": dumps(error_body(
                f"The server had an internal error (request id {request_id}).",
                "server_error", None, "internal_error"))}
        yield {"data": "[DONE]"}

    return EventSourceResponse(frames(), sep="\n")  # x-request-id: added by the middleware
