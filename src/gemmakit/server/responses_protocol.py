"""The OpenAI Responses API request (`POST /v1/responses`) and its conversion to a chat request.

A Responses request is turned into the chat route's `ChatCompletionRequest` (messages, tools,
tool_choice, response_format, sampling), so that it is converted to core types, resolved,
validated and planned by the very code the chat route uses; `Conversation.rename` then names the
Responses parameter in any error that code raises (`messages[2].content` -> `input[1].content`,
`max_tokens` -> `max_output_tokens`, `tools[0].function.parameters` -> `tools[0].parameters`).

Fields of the Responses API this server cannot honour are refused with a 400 naming them, never
ignored: built-in tools (web_search, file_search, ...), background mode, conversations, stored
prompts, reasoning, `truncation: "auto"`, `max_tool_calls`, and any `include` other than
`message.output_text.logprobs`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gemmakit.errors import GemmakitError, InvalidRequestError
from gemmakit.server.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    FunctionDefinition,
    ImageContent,
    ImageURL,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    TextContent,
    ToolCallIn,
    ToolDefinition,
    _Lenient,
    _SamplingFields,
)
from gemmakit.types import MaxTokens, TopLogprobs

LOGPROBS_INCLUDE = "message.output_text.logprobs"

# Responses fields that gemmakit does not declare and cannot honour: refused when present and
# not null (the rest of what a request may carry is logged and ignored, as for every route).
_REFUSED_EXTRAS = {
    "conversation": "conversations are not supported; chain responses with "
                    "previous_response_id.",
    "prompt": "stored prompts are not supported; send the input.",
    "context_management": "context management is not supported.",
    "max_tool_calls": "max_tool_calls is not supported; use parallel_tool_calls: false for "
                      "at most one call.",
    "background_options": "background mode is not supported.",
    "moderation": "moderation settings are not supported; this server's content policy "
                  "applies.",
}


# --- input items (what `input` may hold) ------------------------------------------------------
class InputText(_Lenient):
    type: Literal["input_text"]
    text: str


class OutputText(_Lenient):
    """A previous reply's text, sent back as input (an assistant message's part)."""

    type: Literal["output_text"]
    text: str


class Refusal(_Lenient):
    type: Literal["refusal"]
    refusal: str


class InputImage(_Lenient):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputFile(_Lenient):
    type: Literal["input_file"]


Part = Annotated[InputText | OutputText | Refusal | InputImage | InputFile,
                 Field(discriminator="type")]


class MessageItem(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[Part]
    id: str | None = None
    status: str | None = None


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem
_ITEM_MODELS: dict[str, type[Item]] = {"message": MessageItem, "function_call": FunctionCallItem,
                                       "function_call_output": FunctionCallOutputItem}


# --- tools, tool_choice, text.format ------------------------------------------------------------
class FunctionTool(_Lenient):
    """A function tool in the Responses shape (flat: no `function` wrapper)."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceObject(_Lenient):
    type: str
    name: str | None = None
    mode: str | None = None
    tools: list[dict[str, Any]] | None = None


class TextFormat(_Lenient):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Lenient):
    format: TextFormat | None = None
    verbosity: str | None = None


class Reasoning(_Lenient):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


# --- the request --------------------------------------------------------------------------------
class ResponsesRequest(_SamplingFields):
    """`POST /v1/responses`. The sampling fields are the chat route's (gemmakit's extras such as
    top_k and seed included); the length limit is `max_output_tokens`."""

    input: str | list[Any] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    max_output_tokens: MaxTokens | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    include: list[str] | None = None
    top_logprobs: TopLogprobs | None = None
    metadata: dict[str, str] | None = None
    reasoning: Reasoning | None = None
    background: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None

    @property
    def logprobs(self) -> bool:
        return LOGPROBS_INCLUDE in (self.include or ()) or self.top_logprobs is not None

    def check_supported(self) -> None:
        """Refuse what this server cannot honour, naming the parameter."""
        for name, why in _REFUSED_EXTRAS.items():
            if (self.model_extra or {}).get(name) is not None:
                raise InvalidRequestError(why, param=name)
        if self.max_tokens is not None:
            raise InvalidRequestError("the Responses API limits the reply with "
                                      "max_output_tokens, not max_tokens.", param="max_tokens")
        if self.n != 1:
            raise InvalidRequestError("a response has one output; n must be 1.", param="n")
        if self.background:
            raise InvalidRequestError("background responses are not supported.",
                                      param="background")
        if self.truncation == "auto":
            raise InvalidRequestError("truncation 'auto' is not supported: a conversation "
                                      "longer than the context is a 400.", param="truncation")
        if self.service_tier not in (None, "auto", "default"):
            raise InvalidRequestError(f"service_tier '{self.service_tier[:32]}' is not "
                                      "supported (auto, default).", param="service_tier")
        if self.reasoning is not None and any(
                v not in (None, "none") for v in (self.reasoning.effort, self.reasoning.summary,
                                                  self.reasoning.generate_summary)):
            raise InvalidRequestError("reasoning is not supported by Gemma models.",
                                      param="reasoning")
        for k, inc in enumerate(self.include or ()):
            if inc != LOGPROBS_INCLUDE:
                raise InvalidRequestError(f"include '{inc[:64]}' is not supported (only "
                                          f"'{LOGPROBS_INCLUDE}').", param=f"include[{k}]")
        if self.text is not None and self.text.verbosity not in (None, "medium"):
            raise InvalidRequestError("text.verbosity is not supported (only 'medium').",
                                      param="text.verbosity")
        for i, t in enumerate(self.tools or ()):
            if t.type != "function":
                raise InvalidRequestError(f"tools[{i}]: built-in tool '{t.type[:32]}' is not "
                                          "supported; only function tools are.",
                                          param=f"tools[{i}].type")
            if t.name is None:
                raise InvalidRequestError(f"tools[{i}].name: Field required",
                                          param=f"tools[{i}].name")

    # --- conversion ---------------------------------------------------------------------------
    def items(self) -> list[Item]:
        """`input` as typed items (a string is one user message); 400s name `input[i]...`."""
        if self.input is None:
            return []
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return parse_items(self.input, "input")

    def conversation(self, prior: Sequence[dict[str, Any]] = ()) -> Conversation:
        """The chat request this response runs as: instructions (a system message), then the
        stored conversation of `previous_response_id` (`prior`: its input and output items),
        then `input`."""
        conv = Conversation()
        if self.instructions is not None:
            conv.messages.append(ChatMessage(role="system", content=self.instructions))
            conv.origins.append(_Origin("instructions", "instructions"))
        conv.add(parse_items(list(prior), "previous_response_id"), opaque=True)
        conv.items = self.items()
        conv.add(conv.items, whole=isinstance(self.input, str))
        if not conv.messages:
            raise InvalidRequestError("input is required (a string or a list of items).",
                                      param="input")
        try:
            conv.chat = ChatCompletionRequest(
                model=self.model, messages=conv.messages, max_tokens=self.max_output_tokens,
                logprobs=self.logprobs, top_logprobs=self.top_logprobs,
                parallel_tool_calls=self.parallel_tool_calls, response_format=self._format(),
                **self._chat_tools(),
                **{k: getattr(self, k) for k in (
                    "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                    "presence_penalty", "frequency_penalty", "seed", "stop", "ignore_eos",
                    "logit_bias")})
        except ValidationError as e:  # values checked above; a combination pydantic refuses
            raise _validation_error(e, "") from None
        return conv

    def _chat_tools(self) -> dict[str, Any]:
        tools = [ToolDefinition(function=FunctionDefinition(
            name=t.name or "", description=t.description, parameters=t.parameters,
            strict=t.strict)) for t in self.tools or ()] if self.tools is not None else None
        choice: Any = self.tool_choice
        if isinstance(choice, ToolChoiceObject):
            if choice.type == "function":
                if choice.name is None:
                    raise InvalidRequestError("tool_choice.name is required.",
                                              param="tool_choice.name")
                choice = NamedToolChoice(function=NamedFunction(name=choice.name))
            elif choice.type == "allowed_tools":
                tools, choice = self._allowed(choice, tools or [])
            else:
                raise InvalidRequestError(f"tool_choice type '{choice.type[:32]}' is not "
                                          "supported (function, allowed_tools, or none/auto/"
                                          "required).", param="tool_choice.type")
        return {"tools": tools, "tool_choice": choice}

    @staticmethod
    def _allowed(choice: ToolChoiceObject, tools: list[ToolDefinition]
                 ) -> tuple[list[ToolDefinition], str]:
        """`{"type": "allowed_tools", "mode", "tools"}`: the model sees and may call only the
        listed functions."""
        if choice.mode not in ("auto", "required"):
            raise InvalidRequestError("tool_choice.mode must be 'auto' or 'required'.",
                                      param="tool_choice.mode")
        names = set()
        for k, t in enumerate(choice.tools or ()):
            if t.get("type") != "function" or not isinstance(t.get("name"), str):
                raise InvalidRequestError("allowed tools must be {\"type\": \"function\", "
                                          "\"name\": ...}.", param=f"tool_choice.tools[{k}]")
            if t["name"] not in {d.function.name for d in tools}:
                raise InvalidRequestError(f"tool_choice allows '{t['name'][:64]}', which is "
                                          "not among the tools.",
                                          param=f"tool_choice.tools[{k}].name")
            names.add(t["name"])
        if not names:
            raise InvalidRequestError("tool_choice.tools must list at least one tool.",
                                      param="tool_choice.tools")
        return [d for d in tools if d.function.name in names], choice.mode

    def _format(self) -> ResponseFormat | None:
        f = self.text.format if self.text is not None else None
        if f is None:
            return None
        if f.type != "json_schema":
            return ResponseFormat(type=f.type)
        if f.schema_ is None:
            raise InvalidRequestError("text.format.schema is required for json_schema.",
                                      param="text.format.schema")
        return ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(
            name=f.name, description=f.description, schema=f.schema_, strict=f.strict))

    # --- echoed in the response ----------------------------------------------------------------
    def echo(self) -> dict[str, Any]:
        """The request's settings as the Response object repeats them."""
        choice = self.tool_choice
        text = self.text.model_dump(by_alias=True, exclude_none=True) if self.text else {}
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata or {},
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "previous_response_id": self.previous_response_id,
            "prompt_cache_key": self.prompt_cache_key,
            "safety_identifier": self.safety_identifier,
            "service_tier": "default",  # the tier used, whatever was asked
            "reasoning": {"effort": None, "summary": None},
            "store": self.store,
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "text": {"format": {"type": "text"}, **text},
            "tool_choice": choice.model_dump(exclude_none=True) if isinstance(
                choice, BaseModel) else (choice or "auto"),
            "tools": [t.model_dump(exclude_none=True) for t in self.tools or ()],
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "top_logprobs": self.top_logprobs,
            "truncation": "disabled",
            "user": self.user,
        }


# --- items -> chat messages, and error parameters back ------------------------------------------
@dataclass
class _Origin:
    """Where chat message i came from: its item's path, the path of its text when that was one
    string (or the item's content list), and the path of each of its tool calls."""

    base: str
    content: str
    calls: list[str] = field(default_factory=list)
    opaque: bool = False
    """From the stored conversation (previous_response_id): no finer path to name."""


@dataclass
class Conversation:
    messages: list[ChatMessage] = field(default_factory=list)
    origins: list[_Origin] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    """This request's input items (what is stored with the response)."""
    chat: ChatCompletionRequest | None = None

    def add(self, items: Sequence[Item], opaque: bool = False, whole: bool = False) -> None:
        """Append `items` as chat messages. `opaque`: the stored conversation; `whole`: the
        items are `input` given as one string (its text is then `input` itself)."""
        for i, item in enumerate(items):
            path = "previous_response_id" if opaque else f"input[{i}]"
            if isinstance(item, FunctionCallItem):
                call = ToolCallIn(id=item.call_id,
                                  function=FunctionCall(name=item.name, arguments=item.arguments))
                last = self.messages[-1] if self.messages else None
                if last is not None and last.role == "assistant":  # calls after its prose
                    last.tool_calls = [*(last.tool_calls or []), call]
                    self.origins[-1].calls.append(path)
                    continue
                self.messages.append(ChatMessage(role="assistant", content=None,
                                                 tool_calls=[call]))
                self.origins.append(_Origin(path, path, [path], opaque))
            elif isinstance(item, FunctionCallOutputItem):
                self.messages.append(ChatMessage(role="tool", tool_call_id=item.call_id,
                                                 content=_content(item.output, f"{path}.output")))
                self.origins.append(_Origin(path, f"{path}.output", opaque=opaque))
            else:
                content_path = "input" if whole else f"{path}.content"
                self.messages.append(ChatMessage(role=item.role,
                                                 content=_content(item.content, content_path)))
                self.origins.append(_Origin(path, content_path, opaque=opaque))

    def stored_items(self) -> list[dict[str, Any]]:
        return [i.model_dump(by_alias=True, exclude_none=True) for i in self.items]

    # --- errors: chat parameters -> Responses parameters ----------------------------------------
    def rename(self, e: GemmakitError) -> GemmakitError:
        """Name the Responses parameter in an error the chat code raised."""
        if e.param is not None:
            e.param = self.param(e.param)
        e.message = _PARAM_IN_TEXT.sub(lambda m: self.param(m.group(0)), e.message)
        return e

    def param(self, p: str) -> str:
        m = re.fullmatch(r"messages\[(\d+)\](.*)", p)
        if m:
            k, tail = int(m.group(1)), m.group(2)
            if k >= len(self.origins):
                return "input"
            o = self.origins[k]
            if o.opaque:
                return o.base
            if tail == "":
                return o.base
            if tail.startswith(".content"):
                return o.content + tail[len(".content"):].replace(".image_url.url", ".image_url")
            c = re.fullmatch(r"\.tool_calls\[(\d+)\](.*)", tail)
            if c and int(c.group(1)) < len(o.calls):
                rest = {".function.arguments": ".arguments", ".function.name": ".name",
                        ".id": ".call_id", ".function": ""}.get(c.group(2), c.group(2))
                return o.calls[int(c.group(1))] + rest
            if tail == ".tool_call_id":
                return f"{o.base}.call_id"
            return o.base + tail
        m = re.fullmatch(r"tools(\[\d+\])\.function(.*)", p)
        if m:
            return f"tools{m.group(1)}{m.group(2)}"
        for old, new in _RENAMED:
            if p == old or p.startswith((old + ".", old + "[")):
                return new + p[len(old):]
        return p


_RENAMED = (("messages", "input"), ("max_tokens", "max_output_tokens"),
            ("max_completion_tokens", "max_output_tokens"),
            ("response_format.json_schema.schema", "text.format.schema"),
            ("response_format.json_schema", "text.format"),
            ("response_format", "text.format"),
            ("tool_choice.function.name", "tool_choice.name"))
_PARAM_IN_TEXT = re.compile(r"(?<![\w.])(?:messages\[\d+\]|tools\[\d+\]\.function|max_tokens|"
                            r"max_completion_tokens|response_format|tool_choice\.function)"
                            r"(?:\.[A-Za-z_]+|\[\d+\])*")


def _content(value: str | list[Any], param: str) -> str | list[Any]:
    """Responses content (a string or parts) as chat content parts."""
    if isinstance(value, str):
        return value
    parts: list[Any] = []
    for j, p in enumerate(value):
        if isinstance(p, (InputText, OutputText)):
            parts.append(TextContent(type="text", text=p.text))
        elif isinstance(p, Refusal):
            parts.append(TextContent(type="text", text=p.refusal))
        elif isinstance(p, InputImage):
            if p.file_id is not None or p.image_url is None:
                raise InvalidRequestError("images must be sent as image_url (a data: URL, or a "
                                          "URL this server may fetch); file_id needs a Files "
                                          "API this server does not have.",
                                          param=f"{param}[{j}].image_url")
            parts.append(ImageContent(type="image_url", image_url=ImageURL(url=p.image_url)))
        else:
            raise InvalidRequestError("input_file parts are not supported; send the text as "
                                      "input_text.", param=f"{param}[{j}].type")
    return parts


def parse_items(raw: list[Any], param: str) -> list[Item]:
    """Typed items from JSON; an item type this server cannot take is a 400 naming it."""
    out: list[Item] = []
    for i, item in enumerate(raw):
        p = param if param == "previous_response_id" else f"{param}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequestError(f"{p} must be an object (a message or an item).", param=p)
        kind = item.get("type", "message")
        model = _ITEM_MODELS.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise InvalidRequestError(f"{p}: input items of type '{str(kind)[:32]}' are not "
                                      "supported (message, function_call, function_call_output)"
                                      ".", param=f"{p}.type")
        out.append(_validate(model, item, p))
    return out


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], data: Any, param: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e, param) from None


def _validation_error(e: ValidationError, param: str) -> InvalidRequestError:
    # Of a union's alternatives, the error that went deepest says what was meant.
    err = max(e.errors(), key=lambda x: len(x["loc"]))
    p = param
    for loc in err["loc"]:
        if isinstance(loc, int):
            p += f"[{loc}]"
        elif any(c in loc for c in "[](),-") or loc in _TAGS:
            continue  # a union member or discriminator tag, not a field
        else:
            p = f"{p}.{loc}" if p else loc
    p = p or "input"
    return InvalidRequestError(f"{p}: {err['msg']}", param=p)


_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "input_text", "output_text",
         "refusal", "input_image", "input_file"}
