"""Tools in Gemma's prompt, following Google's documented Gemma function-calling convention.

Gemma 3 has no tool tokens and no tool role: function calling is done in the prompt.

- **Declarations** go into the first user turn (after the folded system text, before the user's
  words): an instruction giving the call syntax, then the functions as a JSON list of
  ``{"name", "description", "parameters"}`` objects (JSON schema parameters).
- **Calls** the model made (assistant ``tool_calls``) are written back as its own turn in the
  syntax it was asked for: ``{"name": ..., "parameters": {...}}``, a JSON list for several.
- **Results** (``role: "tool"`` messages) become a user turn holding one ```tool_output fenced
  block per result, in call order; a user message that follows is appended to that same turn.

The exact text is in docs/tools.md. Everything here is plain text to the tokenizer: a tool result
that contains ``<start_of_turn>`` cannot forge a turn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gemmakit.errors import InvalidRequestError
from gemmakit.types import Message, Part, TextPart

TOOLS_INSTRUCTION = (
    "You have access to functions. If you decide to call one or more of them, reply with the call "
    "and nothing else, in this format:\n"
    '{"name": function name, "parameters": dictionary of argument name and its value}\n'
    "To call several functions at once, reply with a JSON list of such objects.\n"
    "The functions you can call:"
)


def declarations_block(declarations: Sequence[dict[str, Any]]) -> str:
    """The text prefixed to the first user turn: instruction, then the functions as JSON."""
    return f"{TOOLS_INSTRUCTION}\n{json.dumps(list(declarations), indent=2, ensure_ascii=False)}"


def calls_text(calls: Sequence[tuple[str, Any]]) -> str:
    """(name, arguments) pairs written in the syntax the model is asked to use."""
    objs = [{"name": n, "parameters": a} for n, a in calls]
    return json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False)


def tool_output_block(text: str) -> str:
    return f"```tool_output\n{text.strip()}\n```"


def _text(content: str | Sequence[Part] | None, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out = []
    for j, p in enumerate(content):
        if not isinstance(p, TextPart):
            raise InvalidRequestError("tool messages can only contain text.",
                                      param=f"{param}[{j}]")
        out.append(p.text)
    return "".join(out)


def _prepend(content: str | Sequence[Part] | None, prefix: str) -> str | list[Part]:
    if content is None or isinstance(content, str):
        body = (content or "").strip()
        return f"{prefix}\n\n{body}" if body else prefix
    parts = list(content)
    if parts and isinstance(parts[0], TextPart):  # one part: each part is trimmed when rendered
        return [TextPart(f"{prefix}\n\n{parts[0].text.strip()}"), *parts[1:]]
    return [TextPart(prefix), *parts]


def fold_tools(messages: Sequence[Message],
               declarations: Sequence[dict[str, Any]] = ()) -> list[Message]:
    """Rewrite a conversation with tools into plain system/user/assistant messages.

    Tool results must answer the assistant message just before them (by `tool_call_id`), as the
    OpenAI API requires; anything else is a 400 naming the message."""
    out: list[Message] = []
    pending: dict[str, str] = {}  # tool_call_id -> function name, from the last assistant turn
    results: list[str] = []  # tool_output blocks waiting for their user turn

    def flush_results(user: Message | None) -> None:
        nonlocal results
        if not results:
            if user is not None:
                out.append(user)
            return
        block = "\n".join(results)
        results = []
        if user is None:
            out.append(Message("user", block))
        else:
            out.append(Message("user", _prepend(user.content, block), name=user.name))

    for i, m in enumerate(messages):
        if m.role == "tool":
            if m.tool_call_id is None:
                raise InvalidRequestError(f"messages[{i}]: a tool message needs tool_call_id.",
                                          param=f"messages[{i}].tool_call_id")
            if m.tool_call_id not in pending:
                raise InvalidRequestError(
                    f"messages[{i}]: tool_call_id '{m.tool_call_id[:64]}' does not answer a tool "
                    "call of the preceding assistant message.",
                    param=f"messages[{i}].tool_call_id")
            pending.pop(m.tool_call_id)
            results.append(tool_output_block(_text(m.content, f"messages[{i}].content")))
            continue
        if m.role == "user":
            flush_results(m)
            pending = {}
            continue
        flush_results(None)
        pending = {}
        if m.role == "assistant" and m.tool_calls:
            calls = []
            for j, c in enumerate(m.tool_calls):
                try:
                    args = json.loads(c.arguments) if c.arguments.strip() else {}
                except ValueError:
                    raise InvalidRequestError(
                        f"messages[{i}].tool_calls[{j}]: arguments are not valid JSON.",
                        param=f"messages[{i}].tool_calls[{j}].function.arguments") from None
                calls.append((c.name, args))
                pending[c.id] = c.name
            prose = _text(m.content, f"messages[{i}].content").strip()
            text = calls_text(calls)
            out.append(Message("assistant", f"{prose}\n{text}" if prose else text))
        else:
            out.append(m)
    flush_results(None)

    if declarations:
        block = declarations_block(declarations)
        first_user = next((k for k, m in enumerate(out) if m.role == "user"), None)
        if first_user is None:
            out.append(Message("user", block))
        else:
            u = out[first_user]
            out[first_user] = Message("user", _prepend(u.content, block), name=u.name)
    return out
