"""Prompt builders: small functions that write common prompts, with their vocabularies as data.

- `function_call_prompt`: lists functions and asks for ``FUNCTION_CALL: name(param="value")``
  lines — the syntax the `function_call` tool parser reads (gemmakit.tools.parsers).
- `image_analysis_prompt` / `image_comparison_prompt`: multimodal user content (text and image
  parts) asking for an analysis of one image or a comparison of several, by named aspects.
- `multilingual_prompt`: a request to be answered in a culture's language and conventions, in a
  response style. Cultures and styles live in ``prompts/data/builders.toml``, not in code.

Every builder returns message content (a string or a list of parts) for a `Message("user", ...)`;
Gemma's turn format is applied later by prompts/gemma.py, like any other message.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from gemmakit.types import ImagePart, Part, TextPart


@dataclass(frozen=True)
class Style:
    key: str
    description: str
    instruction: str


@dataclass(frozen=True)
class Culture:
    key: str
    language: str
    region: str
    formality: str
    conventions: str


@cache
def _data() -> dict[str, Any]:
    return tomllib.loads(files("gemmakit.prompts").joinpath("data/builders.toml")
                         .read_text("utf-8"))


def styles() -> dict[str, Style]:
    return {k: Style(k, **v) for k, v in _data()["styles"].items()}


def cultures() -> dict[str, Culture]:
    return {k: Culture(k, **v) for k, v in _data()["cultures"].items()}


def _pick(table: dict[str, Any], key: str, what: str) -> Any:
    try:
        return table[key]
    except KeyError:
        raise ValueError(f"unknown {what} '{key}' (known: {', '.join(sorted(table))})") from None


# --- function calling ---------------------------------------------------------------------------
def _signature(decl: dict[str, Any]) -> str:
    params = decl.get("parameters") or {}
    required = set(params.get("required") or [])
    parts = []
    for name, schema in (params.get("properties") or {}).items():
        kind = schema.get("type", "any")
        if "enum" in schema:
            kind = " | ".join(json.dumps(v) for v in schema["enum"])
        parts.append(f"{name}: {kind}{'' if name in required else ' (optional)'}")
    return f"{decl['name']}({', '.join(parts)})"


def function_call_prompt(task: str, tools: Sequence[Any]) -> str:
    """A prompt listing `tools` (ToolSpecs, @tool functions or OpenAI dicts) and asking for
    ``FUNCTION_CALL:`` lines; parse the reply with the `function_call` parser."""
    from gemmakit.tools.schema import as_spec

    lines = ["You can call these functions:"]
    for spec in (as_spec(t) for t in tools):
        d = spec.declaration()
        desc = f" - {d['description']}" if d.get("description") else ""
        lines.append(f"- {_signature(d)}{desc}")
    lines += ["",
              "To call a function, write a line of the form",
              'FUNCTION_CALL: function_name(param="value", other_param=42)',
              "with one line per call and literal values only. If no function is needed, answer "
              "in plain text.",
              "",
              f"Task: {task.strip()}"]
    return "\n".join(lines)


# --- multimodal --------------------------------------------------------------------------------
def image_analysis_prompt(image: ImagePart, aspects: Sequence[str] = (),
                          style: str = "detailed") -> list[Part]:
    """User content asking for an analysis of one image, aspect by aspect."""
    st = _pick(styles(), style, "style")
    ask = "Analyse this image."
    if aspects:
        ask += " Cover, in order: " + "; ".join(a.strip() for a in aspects) + "."
    return [image, TextPart(f"{ask} {st.instruction}")]


def image_comparison_prompt(images: Sequence[ImagePart], criteria: Sequence[str] = (),
                            style: str = "detailed") -> list[Part]:
    """User content asking to compare several images (labelled Image 1, Image 2, ...)."""
    if len(images) < 2:
        raise ValueError("a comparison needs at least two images")
    st = _pick(styles(), style, "style")
    parts: list[Part] = []
    for i, img in enumerate(images, 1):
        parts += [TextPart(f"Image {i}:"), img]
    ask = f"Compare these {len(images)} images: similarities first, then differences."
    if criteria:
        ask += " Judge them on: " + "; ".join(c.strip() for c in criteria) + "."
    parts.append(TextPart(f"{ask} Refer to them as Image 1, Image 2, ... {st.instruction}"))
    return parts


# --- multilingual --------------------------------------------------------------------------------
def multilingual_prompt(request: str, culture: str, style: str = "concise") -> str:
    """`request`, to be answered in the culture's language, register and conventions."""
    c = _pick(cultures(), culture, "culture")
    st = _pick(styles(), style, "style")
    return (f"Answer in {c.language}, for a reader in {c.region}. {c.formality} "
            f"Follow local conventions: {c.conventions} {st.instruction}\n\n{request.strip()}")


__all__ = ["Culture", "Style", "cultures", "function_call_prompt", "image_analysis_prompt",
           "image_comparison_prompt", "multilingual_prompt", "styles"]
