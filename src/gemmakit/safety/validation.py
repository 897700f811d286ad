"""Request validation beyond types and ranges (which the pydantic protocol models check): how many
messages, how large each message and the whole conversation may be, which roles and content part
types are accepted, and how many bytes an image or audio clip may have. Each limit is a setting;
each violation is a 400 naming the `param`. Nothing is truncated or rewritten to fit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gemmakit.errors import InvalidRequestError
from gemmakit.types import AudioPart, ImagePart, Message, TextPart


class RequestTooLargeError(InvalidRequestError):
    code = "request_too_large"


@dataclass(frozen=True)
class RequestLimits:
    max_messages: int
    max_message_chars: int
    max_total_chars: int
    max_content_parts: int
    max_image_bytes: int
    max_audio_bytes: int
    allowed_roles: frozenset[str]
    allowed_content_types: frozenset[str]

    @classmethod
    def from_settings(cls, s: Any) -> RequestLimits:
        return cls(s.max_messages, s.max_message_chars, s.max_total_chars, s.max_content_parts,
                   s.max_image_bytes, s.max_audio_bytes, frozenset(s.allowed_roles),
                   frozenset(s.allowed_content_types))


def validate_messages(messages: Sequence[Message], limits: RequestLimits) -> None:
    """How many messages, how large each one and all of them are, which roles and part types,
    how many bytes each image or audio clip has (decoded)."""
    if len(messages) > limits.max_messages:
        raise RequestTooLargeError(f"too many messages: {len(messages)} (the limit is "
                                   f"{limits.max_messages}).", param="messages")
    total = 0
    for i, m in enumerate(messages):
        if m.role not in limits.allowed_roles:
            raise InvalidRequestError(f"role '{m.role}' is not accepted by this server "
                                      f"(accepted: {', '.join(sorted(limits.allowed_roles))}).",
                                      param=f"messages[{i}].role")
        chars = 0
        if isinstance(m.content, str):
            chars = len(m.content)
        elif isinstance(m.content, list):
            if len(m.content) > limits.max_content_parts:
                raise RequestTooLargeError(
                    f"messages[{i}] has {len(m.content)} content parts (the limit is "
                    f"{limits.max_content_parts}).", param=f"messages[{i}].content")
            for j, part in enumerate(m.content):
                param = f"messages[{i}].content[{j}]"
                kind = _PART_TYPES[type(part)]
                if kind not in limits.allowed_content_types:
                    raise InvalidRequestError(f"content parts of type '{kind}' are not "
                                              "accepted by this server.", param=f"{param}.type")
                if isinstance(part, TextPart):
                    chars += len(part.text)
                elif isinstance(part, ImagePart) and len(part.data) > limits.max_image_bytes:
                    raise RequestTooLargeError(
                        f"the image is {len(part.data)} bytes (the limit is "
                        f"{limits.max_image_bytes}).", param=f"{param}.image_url.url")
                elif isinstance(part, AudioPart) and len(part.data) > limits.max_audio_bytes:
                    raise RequestTooLargeError(
                        f"the audio is {len(part.data)} bytes (the limit is "
                        f"{limits.max_audio_bytes}).", param=f"{param}.input_audio.data")
        if chars > limits.max_message_chars:
            raise RequestTooLargeError(f"messages[{i}] has {chars} characters (the limit is "
                                       f"{limits.max_message_chars}).",
                                       param=f"messages[{i}].content")
        total += chars
    if total > limits.max_total_chars:
        raise RequestTooLargeError(f"the messages hold {total} characters in all (the limit is "
                                   f"{limits.max_total_chars}).", param="messages")


_PART_TYPES = {TextPart: "text", ImagePart: "image_url", AudioPart: "input_audio"}


def unencodable(value: Any, param: str) -> str | None:
    """The parameter of the first text in `value` (strings, lists, dicts, messages and their
    parts) that cannot be encoded as UTF-8 — a lone surrogate such as "\\ud800", which JSON can
    carry — or None. Dict keys count as text too."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return param
        return None
    if isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            bad = unencodable(item, f"{param}[{k}]")
            if bad is not None:
                return bad
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            bad = unencodable(key, param) or unencodable(item, f"{param}.{key}")
            if bad is not None:
                return bad
        return None
    if isinstance(value, Message):
        for name in ("content", "name", "tool_call_id"):
            bad = unencodable(getattr(value, name), f"{param}.{name}")
            if bad is not None:
                return bad
        for k, call in enumerate(value.tool_calls):
            for name in ("id", "name", "arguments"):
                field = "function." + name if name != "id" else name
                bad = unencodable(getattr(call, name), f"{param}.tool_calls[{k}].{field}")
                if bad is not None:
                    return bad
        return None
    if isinstance(value, TextPart):
        return unencodable(value.text, f"{param}.text")
    return None


def check_encodable(value: Any, param: str) -> None:
    """Refuse text that cannot be encoded (a 400 naming the parameter), before it reaches a
    tokenizer, a policy rule or a log line."""
    bad = unencodable(value, param)
    if bad is not None:
        raise InvalidRequestError(f"{bad} holds text that is not valid Unicode (a lone "
                                  "surrogate such as \\ud800); send well-formed UTF-8 text.",
                                  param=bad)


def validate_prompts(prompts: Sequence[str | list[int]], limits: RequestLimits) -> None:
    if len(prompts) > limits.max_messages:
        raise RequestTooLargeError(f"too many prompts: {len(prompts)} (the limit is "
                                   f"{limits.max_messages}).", param="prompt")
    total = 0
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if len(p) > limits.max_message_chars:
                raise RequestTooLargeError(
                    f"the prompt has {len(p)} characters (the limit is "
                    f"{limits.max_message_chars}).",
                    param="prompt" if len(prompts) == 1 else f"prompt[{i}]")
            total += len(p)
    if total > limits.max_total_chars:
        raise RequestTooLargeError(f"the prompts hold {total} characters in all (the limit is "
                                   f"{limits.max_total_chars}).", param="prompt")
