"""OpenAI-compatible request models (pydantic v2) and their conversion to core types.

Ranges come from `gemmakit.types`, so a bad value is refused with the OpenAI parameter name.
Unknown fields are accepted and logged at debug level (clients send vendor extras)."""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gemmakit.errors import InvalidRequestError
from gemmakit.safety.validation import check_encodable
from gemmakit.types import (
    AudioPart,
    ImagePart,
    MaxTokens,
    Message,
    MinP,
    NChoices,
    Part,
    Penalty,
    RepetitionPenalty,
    SamplingParams,
    ScoreTokens,
    Seed,
    Temperature,
    TextPart,
    ToolCall,
    TopK,
    TopLogprobs,
    TopP,
)

log = logging.getLogger("gemmakit.server.protocol")


class _Lenient(BaseModel):
    """Unknown fields are kept out of the way and logged, never fatal."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_unknown(self) -> Any:
        if self.model_extra:
            log.debug("ignoring unknown fields in %s: %s", type(self).__name__,
                      sorted(self.model_extra))
        return self


# --- chat content parts ---------------------------------------------------------------------
class TextContent(_Lenient):
    type: Literal["text"]
    text: str


class ImageURL(_Lenient):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImageContent(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Lenient):
    data: str
    format: str


class AudioContent(_Lenient):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextContent | ImageContent | AudioContent,
                        Field(discriminator="type")]


class FunctionCall(_Lenient):
    name: str
    arguments: str


class ToolCallIn(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


# --- tools and structured output (shapes; tools/ checks names and the schema subset) --------
class FunctionDefinition(_Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(_Lenient):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


def _json(model: BaseModel | None) -> Any:
    """A typed field back as the JSON the client sent (what gemmakit.tools reads)."""
    return None if model is None else model.model_dump(by_alias=True, exclude_none=True)


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class _SamplingFields(_Lenient):
    model: str
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: Seed | None = None
    stop: str | list[str] | None = None
    n: NChoices = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None
    keep_alive: Any = None
    """How long the model stays loaded after this request (Ollama's: "5m", seconds, 0,
    negative for ever); read by server/models_registry.py."""

    def _sampling(self, **extra: Any) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 16:
            raise InvalidRequestError("at most 16 stop sequences are supported.", param="stop")
        if any(not s for s in stop):
            raise InvalidRequestError("stop sequences must not be empty.", param="stop")
        bias = {}
        for k, v in (self.logit_bias or {}).items():
            if not re.fullmatch(r"\d+", k):
                raise InvalidRequestError(f"logit_bias keys must be token ids, got '{k[:32]}'.",
                                          param="logit_bias")
            bias[int(k)] = v
        fields = {name: getattr(self, name) for name in (
            "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
            "presence_penalty", "frequency_penalty", "seed")}
        check_encodable(stop, "stop")
        try:
            return SamplingParams(**{k: v for k, v in fields.items() if v is not None},
                                  stop=stop, ignore_eos=self.ignore_eos, logit_bias=bias,
                                  n=self.n, **extra)
        except ValidationError as e:  # a combination the fields alone could not refuse
            err = e.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            raise InvalidRequestError(f"{param}: {err['msg']}", param=param) from None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    def tool_fields(self) -> dict[str, Any]:
        """tools, tool_choice, parallel_tool_calls and response_format as gemmakit.tools takes
        them (the JSON the client sent)."""
        choice = self.tool_choice
        return {"tools": None if self.tools is None else [_json(t) for t in self.tools],
                "tool_choice": _json(choice) if isinstance(choice, BaseModel) else choice,
                "parallel_tool_calls": self.parallel_tool_calls,
                "response_format": _json(self.response_format)}

    def sampling(self) -> SamplingParams:
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise InvalidRequestError("max_tokens and max_completion_tokens disagree; send one.",
                                      param="max_completion_tokens")
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs to be true.",
                                      param="top_logprobs")
        sp = self._sampling(logprobs=self.logprobs, top_logprobs=self.top_logprobs or 0)
        if self.max_completion_tokens is not None:
            sp = sp.model_copy(update={"max_tokens": self.max_completion_tokens})
        return sp

    def check_supported(self) -> None:
        """Fields this server cannot honour are refused, never silently ignored. (tools,
        tool_choice and response_format are checked by gemmakit.tools.chat.ToolPlan.)"""

    def to_messages(self) -> list[Message]:
        return [_to_message(i, m) for i, m in enumerate(self.messages)]


class CompletionRequest(_SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1)] | Annotated[
        list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | Annotated[
        list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]], Field(min_length=1)]
    max_tokens: ScoreTokens | None = None
    """0 generates nothing: with `echo` and `logprobs`, the prompt is only scored."""
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    """The prompt comes back before the completion; with `logprobs`, scored token by token."""
    suffix: str | None = None
    best_of: int | None = None
    grammar: str | None = None
    """gemmakit's extension (llama-server's name): a GBNF grammar the completion must follow,
    for engines that constrain generation (a gemmakit gateway sends its constraints so)."""
    return_token_ids: bool = False
    """vLLM's extension: each choice (and each streamed event) also carries the token ids it
    generated (`token_ids`), so a gateway in front counts and decodes them exactly."""

    def sampling(self) -> SamplingParams:
        scored = self.echo and self.logprobs is not None
        return self._sampling(logprobs=self.logprobs is not None,
                              top_logprobs=self.logprobs or 0,
                              prompt_logprobs=self.logprobs if scored else None)

    def check_supported(self) -> None:
        if self.max_tokens == 0 and not self.echo:
            raise InvalidRequestError("max_tokens 0 generates nothing; it is only meaningful "
                                      "with echo (to score the prompt).", param="max_tokens")
        if self.suffix:
            raise InvalidRequestError("suffix (fill-in-the-middle) is not supported for Gemma.",
                                      param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequestError("best_of is not supported (it must equal n).",
                                      param="best_of")

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):  # one prompt of token ids
            return [[x for x in p if isinstance(x, int)]]
        return [x if isinstance(x, str) else list(x) for x in p if not isinstance(x, int)]


# --- tokenizer endpoints (vLLM's shapes) ----------------------------------------------------
class TokenizeRequest(_Lenient):
    model: str | None = None
    """Default: the server's (first) model, as vLLM's server takes it (evaluation harnesses send
    no model to the tokenizer routes)."""
    keep_alive: Any = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    """Default: true for a prompt (it starts with <bos>); a conversation's ids are always the
    ones the server prefills, <bos> included."""
    add_generation_prompt: bool = True
    tools: list[ToolDefinition] | None = None
    return_token_strs: bool = False

    def tools_json(self) -> list[Any] | None:
        return None if self.tools is None else [_json(t) for t in self.tools]

    def to_messages(self) -> list[Message] | None:
        if self.messages is None:
            return None
        return [_to_message(i, m) for i, m in enumerate(self.messages)]


class DetokenizeRequest(_Lenient):
    model: str | None = None
    """Default: the server's (first) model."""
    keep_alive: Any = None
    tokens: list[Annotated[int, Field(ge=0)]]


# --- conversion -----------------------------------------------------------------------------
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<b64>;base64)?,(?P<data>.*)", re.S)


def _decode_b64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError("invalid base64 data.", param=param) from None


def _to_part(part: Any, param: str) -> Part:
    if isinstance(part, TextContent):
        return TextPart(part.text)
    if isinstance(part, ImageContent):
        m = _DATA_URL.fullmatch(part.image_url.url)
        if not m or not m.group("b64"):
            raise InvalidRequestError("images must be sent as base64 data: URLs.",
                                      param=f"{param}.image_url.url")
        return ImagePart(_decode_b64(m.group("data"), f"{param}.image_url.url"),
                         m.group("mime") or "application/octet-stream")
    assert isinstance(part, AudioContent)
    return AudioPart(_decode_b64(part.input_audio.data, f"{param}.input_audio.data"),
                     part.input_audio.format)


def _to_message(i: int, m: ChatMessage) -> Message:
    if m.tool_calls and m.role != "assistant":
        raise InvalidRequestError(f"messages[{i}]: only assistant messages carry tool_calls.",
                                  param=f"messages[{i}].tool_calls")
    content: str | list[Part] | None
    if isinstance(m.content, list):
        content = [_to_part(p, f"messages[{i}].content[{j}]") for j, p in enumerate(m.content)]
    else:
        content = m.content
    if content is None and m.role != "assistant":
        raise InvalidRequestError(f"messages[{i}] has no content.", param=f"messages[{i}].content")
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments)
                  for c in m.tool_calls or ())
    return Message(role=m.role, content=content,
                   name=m.name, tool_calls=calls, tool_call_id=m.tool_call_id)
