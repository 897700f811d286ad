"""Chat templates carried by model files, rendered safely and checked against ours.

A template is code from a file someone downloaded: it renders in Jinja's immutable sandbox (no
attribute access to internals, no mutation — the CVE-2024-34359 class of bug), and gemmakit uses it
only to *check* `prompts/gemma.py`: over a corpus of conversations both must produce the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gemmakit.prompts.gemma import BOS, render_chat
from gemmakit.types import ImagePart, Message, TextPart


class TemplateRenderError(Exception):
    pass


def _raise_exception(message: str) -> None:
    raise TemplateRenderError(message)


def _environment() -> ImmutableSandboxedEnvironment:
    # trim_blocks/lstrip_blocks: the settings chat templates are written for (Hugging Face's).
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.globals["raise_exception"] = _raise_exception
    return env


def _as_template_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        if isinstance(m.content, list):
            content: Any = [
                {"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image"}
                for p in m.content
            ]
        else:
            content = m.content or ""
        out.append({"role": m.role, "content": content})
    return out


def render_template(template: str, messages: Sequence[Message], *, bos_token: str = BOS,
                    eos_token: str = "<eos>", add_generation_prompt: bool = True) -> str:
    """Render a model file's chat template in the sandbox."""
    try:
        return _environment().from_string(template).render(
            messages=_as_template_messages(messages), bos_token=bos_token, eos_token=eos_token,
            add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise TemplateRenderError(f"chat template failed: {e}") from e


def _corpus() -> list[list[Message]]:
    """Conversations both renderers must agree on."""
    img = ImagePart(data=b"", mime_type="image/png")
    return [
        [Message("user", "Hello")],
        [Message("user", "  padded  \n")],
        [Message("system", "You are terse."), Message("user", "Hi")],
        [Message("user", "a"), Message("assistant", "b"), Message("user", "c")],
        [Message("system", "Rules:\n- one\n- two"), Message("user", "x"),
         Message("assistant", " y "), Message("user", "z")],
        [Message("user", [TextPart("Describe "), TextPart(" this:")])],
        [Message("user", [TextPart("Look:"), img, TextPart("and this"), img])],
        [Message("user", "日本語のテキスト 🎉"), Message("assistant", "مرحبا"), Message("user", "ok")],
        [Message("user", "line1\n\nline2\n")],
    ]


@dataclass(frozen=True)
class Disagreement:
    conversation: int
    ours: str
    theirs: str


def gemma_chat_template() -> str:
    """Gemma's turn format as a Jinja chat template (text and images), for clients that ask the
    server for its template (GET /tokenizer_info). It renders what prompts/gemma.py renders."""
    from importlib.resources import files

    return (files("gemmakit.prompts") / "data" / "gemma_chat.jinja").read_text(encoding="utf-8")


def check_template(template: str) -> list[Disagreement]:
    """Render the corpus with a model file's template and with gemmakit's; list every mismatch
    (an empty list means they agree)."""
    out = []
    for i, conv in enumerate(_corpus()):
        ours = render_chat(conv).text
        try:
            theirs = render_template(template, conv)
        except TemplateRenderError as e:
            theirs = f"<error: {e}>"
        if ours != theirs:
            out.append(Disagreement(i, ours, theirs))
    return out
