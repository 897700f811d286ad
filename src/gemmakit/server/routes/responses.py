"""POST /v1/responses (OpenAI's Responses API): parse -> pipeline -> encode, as the chat route
(the request becomes a chat request: server/responses_protocol.py); GET and DELETE
/v1/responses/{id} read the response store (server/response_store.py) that `previous_response_id`
continues from.

Streaming sends OpenAI's semantic events (`event:` named, each with its `sequence_number`, no
`[DONE]`): response.created, response.in_progress, then per output item output_item.added,
content_part.added / output_text.delta... / output_text.done / content_part.done for the message,
function_call_arguments.delta / .done for each call (its arguments in one delta: calls leave only
once their arguments validate), output_item.done; then response.completed, or
response.incomplete (max_output_tokens reached). An error after the stream began is an `error`
event followed by response.failed."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from gemmakit.errors import GemmakitError, InvalidRequestError
from gemmakit.pipeline import ChatJob, Delta, Run
from gemmakit.safety.validation import check_encodable
from gemmakit.server.response_store import ResponseNotFoundError, ResponseStore, StoredResponse
from gemmakit.server.responses_protocol import Conversation, ResponsesRequest
from gemmakit.server.routes.chat import messages_of
from gemmakit.server.routes.common import PIPELINE_ROUTE_MARK, begin
from gemmakit.server.streaming import dumps
from gemmakit.types import FinishReason, TokenLogprob

log = logging.getLogger("gemmakit.server")

router = APIRouter()


@router.post("/v1/responses", openapi_extra=PIPELINE_ROUTE_MARK)
async def create_response(body: ResponsesRequest, request: Request) -> Any:
    run = await begin(request, body.model, body.keep_alive)
    for name, value in body.model_dump(by_alias=True, exclude_none=True).items():
        check_encodable(value, name)  # all of it is echoed or stored, not only the messages
    body.check_supported()
    store, key_id = store_of(request), key_id_of(request)
    prior: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        previous = await store.get(body.previous_response_id, key_id)
        if previous is None:
            raise ResponseNotFoundError(f"Previous response with id "
                                        f"'{body.previous_response_id[:64]}' not found.",
                                        param="previous_response_id",
                                        code="previous_response_not_found")
        prior = previous.conversation()
    conv = body.conversation(prior)
    assert conv.chat is not None
    try:
        messages = await messages_of(conv.chat, request)
        await run.chat(ChatJob(messages, conv.chat.sampling(), **conv.chat.tool_fields()))
    except GemmakitError as e:
        conv.rename(e)
        raise
    reply = Reply(body, run, conv, store, key_id, prior)
    if body.stream:
        return _sse(run.decorate_events(reply.events()))
    r = (await run.collect())[0]
    status, incomplete = status_of(r.finish_reason)
    output = []
    if r.content or not r.tool_calls:
        output.append(message_item(new_id("msg"), r.content or "", status,
                                   r.logprobs if body.logprobs else None))
    output += [call_item(new_id("fc"), c, "completed") for c in r.tool_calls]
    response = run.decorate(reply.response(status, output, incomplete,
                                           schema_error=r.schema_error))
    await reply.save(response)
    return response


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, request: Request) -> Any:
    if request.query_params.get("stream", "false").lower() not in ("false", "0"):
        raise InvalidRequestError("a stored response cannot be streamed again.", param="stream")
    check_encodable(response_id, "response_id")
    rec = await store_of(request).get(response_id, key_id_of(request))
    if rec is None:
        raise _not_found(response_id)
    return rec.response


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(response_id: str, request: Request) -> Any:
    """The items of a stored response's own input, as OpenAI lists them: a page of `limit` (1 to
    100, default 20) in `order` (`desc`, the default, or `asc`), after or before an item id."""
    q = request.query_params
    check_encodable(response_id, "response_id")
    try:
        limit = int(q.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequestError("limit must be an integer from 1 to 100.", param="limit")
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequestError("order must be 'asc' or 'desc'.", param="order")
    rec = await store_of(request).get(response_id, key_id_of(request))
    if rec is None:
        raise _not_found(response_id)
    items = [listed_item(item, f"item_{response_id.removeprefix('resp_')}_{k:04d}")
             for k, item in enumerate(rec.input_items())]
    if order == "desc":
        items.reverse()
    ids = [i["id"] for i in items]
    for cursor in ("after", "before"):
        at = q.get(cursor)
        if at is not None and at not in ids:
            raise InvalidRequestError(f"{cursor} names no item of this response.", param=cursor)
    start = ids.index(q["after"]) + 1 if "after" in q else 0
    end = ids.index(q["before"]) if "before" in q else len(items)
    page = items[start:end][:limit]
    return {"object": "list", "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + len(page) < end}


def listed_item(item: dict[str, Any], fallback_id: str) -> dict[str, Any]:
    """An input item as the list shows it: with an id (its own, else a stable one from its
    place), a type, and a message's text as content parts."""
    out = {"id": item.get("id") or fallback_id, **{k: v for k, v in item.items() if k != "id"}}
    out.setdefault("type", "message")
    if out["type"] == "message":
        if isinstance(out.get("content"), str):
            out["content"] = [{"type": "input_text", "text": out["content"]}]
        out.setdefault("status", "completed")
    return out


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> Any:
    check_encodable(response_id, "response_id")
    if not await store_of(request).delete(response_id, key_id_of(request)):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


def _not_found(response_id: str) -> ResponseNotFoundError:
    return ResponseNotFoundError(f"Response with id '{response_id[:64]}' not found.",
                                 param="response_id")


def store_of(request: Request) -> ResponseStore:
    """The app's response store, under the data directory of its settings."""
    state = request.app.state
    store: ResponseStore | None = getattr(state, "response_store", None)
    if store is None:
        store = state.response_store = ResponseStore(state.settings.home)
    return store


def key_id_of(request: Request) -> str | None:
    """The id of the API key that sent the request (None without --auth): stored responses
    are scoped to it."""
    key = request.scope["state"].get("key")
    return key.id if key is not None else None


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# --- encoding -------------------------------------------------------------------------------------
def status_of(finish: FinishReason | None) -> tuple[str, dict[str, Any] | None]:
    """(status, incomplete_details) for how the reply ended."""
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish in ("content_filter", "shutdown", "cancelled"):
        return "incomplete", {"reason": finish}
    return "completed", None


def message_item(item_id: str, text: str, status: str, logprobs: list[TokenLogprob] | None
                 ) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [text_part(text, logprobs)]}


def text_part(text: str, logprobs: list[TokenLogprob] | None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
    if logprobs is not None:
        part["logprobs"] = [{"token": e.token, "logprob": e.logprob, "bytes": e.bytes,
                             "top_logprobs": [{"token": t.token, "logprob": t.logprob,
                                               "bytes": t.bytes} for t in e.top]}
                            for e in logprobs]
    return part


def delta_logprobs(entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    return [{"token": e.token, "logprob": e.logprob,
             "top_logprobs": [{"token": t.token, "logprob": t.logprob} for t in e.top]}
            for e in entries]


def call_item(item_id: str, call: dict[str, Any], status: str, arguments: str | None = None
              ) -> dict[str, Any]:
    fn = call["function"]
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call["id"],
            "name": fn["name"], "arguments": fn["arguments"] if arguments is None else arguments}


def usage_of(run: Run) -> dict[str, Any]:
    u = run.usage
    return {"input_tokens": u.prompt_tokens,
            # cached: prompt tokens the engine's prefix cache held (a chain's earlier turns);
            # cache_write is OpenAI's billing notion, nothing is billed here
            "input_tokens_details": {"cached_tokens": sum(s.cached_prompt_tokens
                                                          for s in run.sequences),
                                     "cache_write_tokens": 0},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.total_tokens}


class Reply:
    """One response being made: its Response objects, its events, its storing."""

    def __init__(self, body: ResponsesRequest, run: Run, conv: Conversation, store: ResponseStore,
                 key_id: str | None, prior: list[dict[str, Any]]) -> None:
        self.body, self.run, self.conv = body, run, conv
        self.store, self.key_id, self.prior = store, key_id, prior
        self.id, self.created = new_id("resp"), int(time.time())

    def response(self, status: str, output: list[dict[str, Any]],
                 incomplete: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
                 schema_error: str | None = None) -> dict[str, Any]:
        done = status in ("completed", "incomplete", "failed")
        out = {"id": self.id, "object": "response", "created_at": self.created,
               "status": status, "background": False,
               "completed_at": int(time.time()) if status == "completed" else None,
               "error": error, "incomplete_details": incomplete, "model": self.run.model_name,
               "output": output, "usage": usage_of(self.run) if done else None,
               **self.body.echo()}
        screen = self.run.screen
        hits = screen.choice_hits.get(0) if screen is not None and done else None
        if hits:  # what the output policy did (Azure OpenAI's field, as on chat choices)
            out["content_filter_results"] = hits.as_dict()
        if schema_error is not None:  # the check after generation failed (as on chat choices)
            out["schema_error"] = schema_error
        return out

    async def save(self, response: dict[str, Any]) -> None:
        if self.body.store:
            await self.store.put(StoredResponse(self.id, self.key_id, response,
                                                [*self.prior, *self.conv.stored_items()],
                                                len(self.prior)))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        ev = EventStream(self.response, self.body.logprobs)
        for e in ev.start():
            yield e
        try:
            async for d in self.run.stream():
                for e in ev.feed(d):
                    yield e
                if d.finish_reason is not None:  # one choice: its end is the response's
                    *items, final = ev.finish(d)
                    for e in items:
                        yield e
                    await self.save(final["response"])  # stored before the client hears of it
                    yield final
        except GemmakitError as e:
            for x in ev.fail(e.message, e.code or e.type, e.param, _failure_code(e.status)):
                yield x
        except Exception:
            rid = self.run.caller.request_id
            log.exception("request %s failed while streaming", rid)
            for x in ev.fail(f"The server had an internal error (request id {rid}).",
                             "internal_error", None, "server_error"):
                yield x


def _failure_code(status: int) -> str:
    """A failed response's `error.code`, one of OpenAI's values (the `error` event before it
    carries gemmakit's own code)."""
    if status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if 400 <= status < 500 else "server_error"


class EventStream:
    """The semantic events of one streamed response, as a small state machine fed with the
    run's deltas: the message item opens at the first text; calls come at the end."""

    def __init__(self, response: Callable[..., dict[str, Any]], logprobs: bool) -> None:
        self.response = response
        self.logprobs = logprobs
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.message_id: str | None = None
        self.text = ""
        self.lp: list[TokenLogprob] = []

    def _ev(self, type_: str, **fields: Any) -> dict[str, Any]:
        ev = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def start(self) -> list[dict[str, Any]]:
        return [self._ev("response.created", response=self.response("in_progress", [])),
                self._ev("response.in_progress", response=self.response("in_progress", []))]

    def _open_message(self) -> list[dict[str, Any]]:
        self.message_id = new_id("msg")
        item = {"id": self.message_id, "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}
        return [self._ev("response.output_item.added", output_index=0, item=item),
                self._ev("response.content_part.added", item_id=self.message_id,
                         output_index=0, content_index=0, part=text_part("", None))]

    def feed(self, d: Delta) -> list[dict[str, Any]]:
        """The events of one delta's text (a final delta's calls come from `finish`)."""
        if self.logprobs:
            self.lp += d.logprobs
        if not d.text:
            return []
        out = self._open_message() if self.message_id is None else []
        self.text += d.text
        out.append(self._ev("response.output_text.delta", item_id=self.message_id,
                            output_index=0, content_index=0, delta=d.text,
                            logprobs=delta_logprobs(d.logprobs) if self.logprobs else []))
        return out

    def finish(self, d: Delta) -> list[dict[str, Any]]:
        """The events that close the output (the message, then each call), the terminal one
        (response.completed or response.incomplete) last."""
        status, incomplete = status_of(d.finish_reason)
        out = []
        if self.message_id is None and not d.tool_calls:
            out += self._open_message()  # an empty reply is still a message
        if self.message_id is not None:
            lp = self.lp if self.logprobs else None
            out.append(self._ev("response.output_text.done", item_id=self.message_id,
                                output_index=0, content_index=0, text=self.text,
                                logprobs=delta_logprobs(self.lp) if self.logprobs else []))
            out.append(self._ev("response.content_part.done", item_id=self.message_id,
                                output_index=0, content_index=0, part=text_part(self.text, lp)))
            item = message_item(self.message_id, self.text, status, lp)
            out.append(self._ev("response.output_item.done", output_index=0, item=item))
            self.output.append(item)
        for call in d.tool_calls:
            k, item_id, args = len(self.output), new_id("fc"), call["function"]["arguments"]
            out.append(self._ev("response.output_item.added", output_index=k,
                                item=call_item(item_id, call, "in_progress", arguments="")))
            out.append(self._ev("response.function_call_arguments.delta", item_id=item_id,
                                output_index=k, delta=args))
            out.append(self._ev("response.function_call_arguments.done", item_id=item_id,
                                output_index=k, name=call["function"]["name"], arguments=args))
            item = call_item(item_id, call, "completed")
            out.append(self._ev("response.output_item.done", output_index=k, item=item))
            self.output.append(item)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._ev(kind, response=self.response(status, list(self.output), incomplete,
                                                         schema_error=d.schema_error)))
        return out

    def fail(self, message: str, code: str, param: str | None, failure: str
             ) -> list[dict[str, Any]]:
        """An error after the stream began: an `error` event, then response.failed."""
        return [self._ev("error", code=code, message=message, param=param),
                self._ev("response.failed", response=self.response(
                    "failed", list(self.output), error={"code": failure, "message": message}))]


def _sse(events: AsyncIterator[dict[str, Any]]) -> EventSourceResponse:
    """Server-sent events with OpenAI's framing for this API: `event: <type>` and its JSON."""
    async def frames() -> AsyncIterator[dict[str, str]]:
        async for ev in events:
            yield {"event": ev["type"], "data": dumps(ev)}

    return EventSourceResponse(frames(), sep="\n")  # x-request-id: added by the middleware
