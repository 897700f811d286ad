"""Gemma's turn format, written from its public specification.

    <bos><start_of_turn>user
    {system text}\n\n{user text}<end_of_turn>
    <start_of_turn>model
    {model text}<end_of_turn>
    <start_of_turn>model
                                  <- generation starts here

Rules (see docs/gemma-format.md):
- the assistant role is called ``model``; text is trimmed of surrounding whitespace;
- Gemma has no system role: a leading system (or developer) message is prefixed, followed by a blank
  line, to the first user turn — never dropped. A system message with no user turn after it becomes
  that user turn's whole text;
- after the optional system message, roles alternate user/model starting with user, and the
  conversation ends with a user turn; anything else is refused with the reason;
- list-of-parts content is concatenated in order, each text part trimmed, an image part becoming
  ``<start_of_image>``.

The prompt is returned as segments marked special or not: control tokens come only from the
template, so user text that *looks* like ``<start_of_turn>`` is tokenized as plain text and cannot
forge a turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gemmakit.errors import InvalidRequestError
from gemmakit.types import AudioPart, ImagePart, Message, Part, TextPart

BOS = "<bos>"
EOS = "<eos>"
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
START_OF_IMAGE = "<start_of_image>"
START_OF_AUDIO = "<start_of_audio>"

# Generation of a model turn ends at either of these (ids 106 and 1 in Gemma 3's vocabulary).
STOP_TOKENS: tuple[str, ...] = (END_OF_TURN, EOS)
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", EOS, BOS, START_OF_TURN, END_OF_TURN, START_OF_IMAGE,
                                   "<end_of_image>", START_OF_AUDIO, "<end_of_audio>")
"""The control tokens of Gemma's format (a model's vocabulary has those of its modalities)."""

_ROLE_NAMES = {"user": "user", "assistant": "model"}
_SYSTEM_ROLES = ("system", "developer")


@dataclass(frozen=True)
class Segment:
    """A piece of prompt text. ``special``: control-token markup in it (``<start_of_turn>``) is
    parsed as control tokens; otherwise it is tokenized as plain text."""

    text: str
    special: bool = False


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt: segments to tokenize (special ones parsed as control tokens) and the
    media parts in the order their placeholders appear."""

    segments: tuple[Segment, ...]
    media: tuple[Part, ...] = ()

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)


class _Builder:
    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.media: list[Part] = []

    def special(self, token: str) -> None:
        self.segments.append(Segment(token, special=True))

    def text(self, text: str) -> None:
        if not text:
            return
        if self.segments and not self.segments[-1].special:
            self.segments[-1] = Segment(self.segments[-1].text + text)
        else:
            self.segments.append(Segment(text))

    def build(self) -> Prompt:
        return Prompt(tuple(self.segments), tuple(self.media))


def _text_of(content: str | Sequence[Part] | None, param: str) -> str:
    """Plain text of system content (which cannot hold media)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, TextPart):
            raise InvalidRequestError("A system message can only contain text.",
                                      param=f"{param}[{i}]")
        texts.append(part.text)
    return "".join(texts)


def _emit_content(b: _Builder, content: str | Sequence[Part] | None) -> None:
    if content is None:
        return
    if isinstance(content, str):
        b.text(content.strip())
        return
    for part in content:
        if isinstance(part, TextPart):
            b.text(part.text.strip())
        elif isinstance(part, ImagePart):
            b.special(START_OF_IMAGE)
            b.media.append(part)
        elif isinstance(part, AudioPart):
            b.special(START_OF_AUDIO)
            b.media.append(part)


def render_chat(messages: Sequence[Message], *, add_generation_prompt: bool = True,
                tools: Sequence[dict[str, Any]] = ()) -> Prompt:
    """Render an OpenAI-style conversation in Gemma's turn format (see the module docstring).
    `tools`: function declarations to show the model (prompts/gemma_tools.py)."""
    if not messages:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages")
    if tools or any(m.role == "tool" or m.tool_calls for m in messages):
        from gemmakit.prompts.gemma_tools import fold_tools

        messages = fold_tools(messages, tools)

    system_prefix = ""
    turns = list(enumerate(messages))
    if messages[0].role in _SYSTEM_ROLES:
        system_prefix = _text_of(messages[0].content, "messages[0].content")
        turns = turns[1:]

    b = _Builder()
    b.special(BOS)
    if not turns:
        # Only a system message: it is the user's turn (never dropped).
        b.special(START_OF_TURN)
        b.text("user\n")
        b.text(system_prefix.strip())
        b.special(END_OF_TURN)
        b.text("\n")
    for pos, (i, msg) in enumerate(turns):
        expected = "user" if pos % 2 == 0 else "assistant"
        if msg.role in _SYSTEM_ROLES:
            raise InvalidRequestError(
                f"messages[{i}]: Gemma has no system role; a system message is only allowed as the "
                "first message (it is folded into the first user turn).",
                param=f"messages[{i}].role")
        if msg.role not in _ROLE_NAMES:
            raise InvalidRequestError(
                f"messages[{i}]: role '{msg.role}' is not supported by this conversation format.",
                param=f"messages[{i}].role")
        if msg.role != expected:
            raise InvalidRequestError(
                f"messages[{i}]: Gemma conversations must alternate user/assistant turns starting "
                f"with a user turn (after an optional system message); expected '{expected}' here, "
                f"got '{msg.role}'.",
                param=f"messages[{i}].role")
        b.special(START_OF_TURN)
        b.text(_ROLE_NAMES[msg.role] + "\n")
        if pos == 0 and system_prefix:
            b.text(system_prefix + "\n\n")
        _emit_content(b, msg.content)
        b.special(END_OF_TURN)
        b.text("\n")
    if turns and turns[-1][1].role != "user" and add_generation_prompt:
        i = turns[-1][0]
        raise InvalidRequestError(
            f"messages[{i}]: the conversation must end with a user message for the model to reply.",
            param=f"messages[{i}].role")
    if add_generation_prompt:
        b.special(START_OF_TURN)
        b.text("model\n")
    return b.build()


def render_completion(prompt: str) -> Prompt:
    """A raw completion prompt: ``<bos>`` then the text as given (no turn markup, nothing trimmed).

    Control tokens written in a raw prompt are parsed as such: a raw completion is the caller's
    own format (llama.cpp's server does the same)."""
    body = prompt[len(BOS):] if prompt.startswith(BOS) else prompt
    return Prompt((Segment(BOS, special=True), Segment(body, special=True)) if body
                  else (Segment(BOS, special=True),))
