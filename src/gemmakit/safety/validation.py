"""Request validation beyond types and ranges (which the pydantic protocol models check): how many
messages, how large each message and the whole conversation may be, which roles and content part
types are accepted, and how many bytes an image or audio clip may have. Each limit is a setting;
each violation is a 400 naming the `param`. Nothing is truncated or rewritten to fit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gemmakit.errors import InvalidRequestError

ROLES = ("system", "developer", "user", "assistant", "tool")
CONTENT_TYPES = ("text", "image_url", "input_audio")


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


def b64_size(data: str) -> int:
    """Decoded size of base64 text without decoding it."""
    n = len(data.rstrip("="))
    return n * 3 // 4


def _data_url_payload(url: str) -> str | None:
    if not url.startswith("data:"):
        return None
    return url.partition(",")[2]


def validate_chat(messages: Sequence[Any], limits: RequestLimits) -> None:
    """`messages` are the protocol's ChatMessage models (before conversion)."""
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
                if part.type not in limits.allowed_content_types:
                    raise InvalidRequestError(f"content parts of type '{part.type}' are not "
                                              "accepted by this server.", param=f"{param}.type")
                if part.type == "text":
                    chars += len(part.text)
                elif part.type == "image_url":
                    payload = _data_url_payload(part.image_url.url)
                    if payload is not None and b64_size(payload) > limits.max_image_bytes:
                        raise RequestTooLargeError(
                            f"the image is {b64_size(payload)} bytes (the limit is "
                            f"{limits.max_image_bytes}).", param=f"{param}.image_url.url")
                elif part.type == "input_audio":
                    size = b64_size(part.input_audio.data)
                    if size > limits.max_audio_bytes:
                        raise RequestTooLargeError(
                            f"the audio is {size} bytes (the limit is "
                            f"{limits.max_audio_bytes}).", param=f"{param}.input_audio.data")
        if chars > limits.max_message_chars:
            raise RequestTooLargeError(f"messages[{i}] has {chars} characters (the limit is "
                                       f"{limits.max_message_chars}).",
                                       param=f"messages[{i}].content")
        total += chars
    if total > limits.max_total_chars:
        raise RequestTooLargeError(f"the messages hold {total} characters in all (the limit is "
                                   f"{limits.max_total_chars}).", param="messages")


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
