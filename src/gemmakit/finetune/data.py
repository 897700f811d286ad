"""Training data: JSONL lines -> token ids and a loss mask, rendered exactly as the server renders.

Three line formats, told apart by their keys:
- chat: ``{"messages": [...], "tools": [...]?}`` — OpenAI chat messages (tool calls and tool
  results included), parsed by the chat route's own models and rendered by `render_chat`, so the
  system text is folded, tools declared, calls and results written exactly as served. The loss
  covers every assistant turn, from the first token the model generates after the served prompt
  through its ``<end_of_turn>``.
- prompt/completion: ``{"prompt": str, "completion": str}`` — a raw completion, as
  /v1/completions renders it (``<bos>`` + prompt); the loss covers the completion and an
  ``<eos>``. With message lists for both (TRL's conversational form) it is a chat example whose
  loss covers the completion's assistant turns.
- text: ``{"text": str}`` — ``<bos>`` + text + ``<eos>``, the loss on every token after ``<bos>``.

The ids of an assistant turn's prompt are checked to be a prefix of the example's ids: what the
model learns to continue is exactly what the server prefills before it generates that turn.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gemmakit.errors import ConfigError, GemmakitError
from gemmakit.prompts import Prompt, render_chat, render_completion
from gemmakit.prompts.gemma import END_OF_TURN, EOS
from gemmakit.types import AudioPart, ImagePart, Message

Format = Literal["chat", "prompt_completion", "text"]
Tokenize = Callable[..., list[int]]
"""``tokenize(text, special=bool) -> ids``: the serving engine's tokenizer contract."""

RENDERER_VERSION = "gemma-turns-1"
"""Recorded in each adapter's manifest: bump it when the renderer's output changes."""


class DataError(ConfigError):
    """A line of training data that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class Example:
    line: int
    ids: list[int]
    mask: list[int]
    """1 where the token is a target (the model's own output), else 0; same length as ids."""

    @property
    def supervised(self) -> int:
        return sum(self.mask)


@dataclass
class Dataset:
    path: Path
    examples: list[Example]
    format: Format
    sha256: str
    skipped_long: int = 0


def detect_format(obj: dict[str, Any]) -> Format:
    keys = set(obj)
    if "messages" in keys:
        extra = keys - {"messages", "tools"}
        if extra:
            raise ValueError(f"a chat line has 'messages' and optionally 'tools', not "
                             f"{sorted(extra)}")
        return "chat"
    if "prompt" in keys or "completion" in keys:
        missing = {"prompt", "completion"} - keys
        if missing:
            raise ValueError(f"a prompt/completion line needs '{missing.pop()}'")
        if keys - {"prompt", "completion"}:
            raise ValueError(f"a prompt/completion line has only 'prompt' and 'completion', not "
                             f"{sorted(keys - {'prompt', 'completion'})}")
        return "prompt_completion"
    if "text" in keys:
        if keys != {"text"}:
            raise ValueError(f"a text line has only 'text', not {sorted(keys - {'text'})}")
        return "text"
    raise ValueError("no 'messages', 'prompt'/'completion' or 'text' key: the line's format "
                     f"cannot be told (keys: {sorted(keys)})")


def tokenize_prompt(tokenize: Tokenize, prompt: Prompt) -> list[int]:
    """A rendered prompt's ids: each segment tokenized with control tokens parsed only in the
    template's own segments (the service's rule, `Service.tokenize_prompt`)."""
    ids: list[int] = []
    for seg in prompt.segments:
        ids.extend(tokenize(seg.text, special=seg.special))
    return ids


class Encoder:
    """Lines -> examples for one tokenizer (the serving engine's `tokenize`)."""

    def __init__(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize
        self.eot = self._single(END_OF_TURN)
        self.eos = self._single(EOS)

    def _single(self, token: str) -> int:
        ids = self.tokenize(token, special=True)
        if len(ids) != 1:
            raise ConfigError(f"the model's vocabulary has no '{token}' token")
        return ids[0]

    # --- chat -------------------------------------------------------------------------------
    def parse_chat(self, messages: Any, tools: Any) -> tuple[list[Message], list[dict[str, Any]]]:
        """The chat route's own parsing: its pydantic models, message conversion and tool
        specs (errors name the field as the API would)."""
        from pydantic import ValidationError

        from gemmakit.server.protocol import ChatCompletionRequest
        from gemmakit.tools.schema import parse_tools

        body: dict[str, Any] = {"model": "training-data", "messages": messages}
        if tools is not None:
            body["tools"] = tools
        try:
            req = ChatCompletionRequest.model_validate(body)
        except ValidationError as e:
            err = e.errors()[0]
            raise ValueError(f"{_param(err['loc'])}: {err['msg']}") from None
        msgs = req.to_messages()
        decl = [t.declaration() for t in parse_tools(req.tool_fields()["tools"])] \
            if tools is not None else []
        for i, m in enumerate(msgs):
            if isinstance(m.content, list) and any(isinstance(p, ImagePart | AudioPart)
                                                   for p in m.content):
                raise ValueError(f"messages[{i}].content: image and audio parts are not "
                                 "supported in training data (text only)")
        return msgs, decl

    def chat(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] = (),
             supervise_from: int = 0) -> tuple[list[int], list[int]]:
        """Ids and mask of a conversation; assistant messages at index >= supervise_from are
        targets."""
        full = render_chat(messages, tools=tools, add_generation_prompt=False)
        ids = tokenize_prompt(self.tokenize, full)
        mask = [0] * len(ids)
        for i, m in enumerate(messages):
            if m.role != "assistant" or i < supervise_from:
                continue
            served = tokenize_prompt(self.tokenize, render_chat(messages[:i], tools=tools))
            if ids[:len(served)] != served:  # the renderer must be prefix-stable; say so if not
                raise ValueError(f"messages[{i}]: the served prompt before this turn is not a "
                                 "prefix of the rendered conversation")
            try:
                end = ids.index(self.eot, len(served))
            except ValueError:
                raise ValueError(f"messages[{i}]: no <end_of_turn> after the turn") from None
            mask[len(served):end + 1] = [1] * (end + 1 - len(served))
        return ids, mask

    # --- lines ------------------------------------------------------------------------------
    def encode(self, obj: dict[str, Any], fmt: Format) -> tuple[list[int], list[int]]:
        if fmt == "chat":
            msgs, decl = self.parse_chat(obj["messages"], obj.get("tools"))
            return self.chat(msgs, decl)
        if fmt == "text":
            text = _string(obj, "text")
            ids = tokenize_prompt(self.tokenize, render_completion(text)) + [self.eos]
            return ids, [0] + [1] * (len(ids) - 1)
        prompt, completion = obj["prompt"], obj["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):
            msgs, _ = self.parse_chat(prompt + completion, None)
            return self.chat(msgs, (), supervise_from=len(prompt))
        p, c = _string(obj, "prompt"), _string(obj, "completion")
        if not c:
            raise ValueError("completion: must not be empty (there would be nothing to learn)")
        head = tokenize_prompt(self.tokenize, render_completion(p))
        tail = self.tokenize(c, special=False) + [self.eos]
        return head + tail, [0] * len(head) + [1] * len(tail)


def _string(obj: dict[str, Any], key: str) -> str:
    v = obj[key]
    if not isinstance(v, str):
        raise ValueError(f"{key}: must be a string (or, for prompt/completion, both message "
                         f"lists), not {type(v).__name__}")
    return v


def _param(loc: Sequence[Any]) -> str:
    out = ""
    for x in loc:
        out += f"[{x}]" if isinstance(x, int) else (f".{x}" if out else str(x))
    return out


def load(path: Path, encoder: Encoder, *, max_seq_len: int, skip_long: bool = False
         ) -> Dataset:
    """Read, validate and encode every line (blank lines are allowed). Any bad line is a
    DataError naming it; an example longer than `max_seq_len` is one too unless `skip_long`,
    and then it is counted in `skipped_long`. Mixed formats in one file are refused."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    examples: list[Example] = []
    fmt: Format | None = None
    skipped = 0
    for n, line in enumerate(raw.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise DataError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: a line must be a JSON object, not {type(obj).__name__}")
        try:
            this = detect_format(obj)
            if fmt is not None and this != fmt:
                raise ValueError(f"this line is {this} but the file's first line is {fmt}; "
                                 "use one format per file")
            fmt = this
            ids, mask = encoder.encode(obj, this)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        except GemmakitError as e:
            raise DataError(f"{where}: {e.param + ': ' if e.param else ''}{e.message}") from None
        if not any(mask):
            raise DataError(f"{where}: nothing to learn — the loss mask is all zero (a chat "
                            "example needs an assistant message)")
        if len(ids) > max_seq_len:
            if not skip_long:
                raise DataError(f"{where}: {len(ids)} tokens, longer than --max-seq-len "
                                f"{max_seq_len}; raise it, or pass --skip-long to leave such "
                                "examples out (they are counted)")
            skipped += 1
            continue
        examples.append(Example(n, ids, mask))
    if fmt is None:
        raise DataError(f"{path}: no examples (the file is empty)")
    if not examples:
        raise DataError(f"{path}: every example is longer than --max-seq-len {max_seq_len}")
    return Dataset(path, examples, fmt, hashlib.sha256(raw).hexdigest(), skipped)
