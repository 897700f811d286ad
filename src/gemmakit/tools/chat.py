"""The tool plan of one chat request: what the prompt declares, what the engine is constrained to,
and how the reply becomes OpenAI `content` + `tool_calls`.

| request                                    | prompt          | constraint               | reply |
|--------------------------------------------|-----------------|--------------------------|-------|
| no tools, or `tool_choice: "none"`         | no declarations | none (or response_format)| text  |
| `tool_choice: "auto"` (default with tools) | declarations    | none (or call-or-schema) | parsed|
| `"required"` / `{"function": {"name"}}`    | declarations    | call grammar             | parsed|
| `response_format` json_object/json_schema  | —               | schema grammar           | JSON  |

Calls leave only after their name is one of the allowed tools and their arguments validate against
the tool's schema with `jsonschema`; a reply that breaks those rules (possible only without a
constraint, without a max_tokens budget, or under a schema keyword the grammar leaves to this
check) is returned as text, never as a call. A structured answer is checked the same way; one that
fails is returned as it is. Either way `Outcome.invalid` says why, and the reply carries it (the
choice's `schema_error`) and the metrics count it (`gemmakit_schema_check_failures_total`).

With `max_tokens`, every constraint is budgeted (tools/gbnf.py): a forced call or a structured
answer always completes within max_tokens, and a max_tokens too small for the shortest valid reply
is a 400 before anything is generated.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gemmakit.errors import InvalidRequestError, UnsupportedError
from gemmakit.tools.constraints import (
    _rebase_refs,
    call_schema,
    compile_schema,
    json_constraint,
    response_format_schema,
    tool_call_constraint,
)
from gemmakit.tools.gbnf import Tokenizer
from gemmakit.tools.parsers import CallParser, ParsedCall, StreamingParser, get_parser
from gemmakit.tools.parsers.base import remainder
from gemmakit.tools.schema import SchemaError, ToolSpec, parse_tools, validate_value
from gemmakit.types import Capabilities, Constraint, FinishReason

log = logging.getLogger("gemmakit.tools")

Mode = Literal["none", "auto", "required"]
InvalidKind = Literal["answer", "call"]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class Outcome:
    """A finished choice: content, OpenAI tool_calls entries, finish_reason."""

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    invalid: str | None = None
    """Why a structured answer (response_format) failed its schema check, or why the calls the
    reply wrote were not returned as calls; None when all passed or there was nothing to check.
    The answer (or the rejected calls' text) is still `content`."""
    invalid_kind: InvalidKind | None = None
    """What failed: "answer" (a response_format answer) or "call" (the reply's calls)."""


def tool_call_entry(call: ParsedCall) -> dict[str, Any]:
    return {"id": new_call_id(), "type": "function",
            "function": {"name": call.name, "arguments": call.arguments_json}}


@dataclass
class ToolPlan:
    tools: list[ToolSpec] = field(default_factory=list)
    """Tools the model may call (after tool_choice narrowed them); empty when it may not."""
    declared: list[ToolSpec] = field(default_factory=list)
    """Tools shown in the prompt."""
    mode: Mode = "none"
    parallel: bool = True
    constraint: Constraint | None = None
    constraint_param: str | None = None
    parser: CallParser | None = None
    response_schema: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        """Whether the reply is parsed for calls."""
        return self.mode != "none" and bool(self.tools)

    @property
    def declarations(self) -> list[dict[str, Any]]:
        return [t.declaration() for t in self.declared]

    @classmethod
    def build(cls, *, tools: Any = None, tool_choice: Any = None,
              parallel_tool_calls: bool | None = None, response_format: Any = None,
              parser: str = "json", specs: Sequence[ToolSpec] | None = None,
              max_tokens: int | None = None, tokenizer: Tokenizer | None = None) -> ToolPlan:
        """Check the request's tool fields and compile its constraint (400s name the field and
        the tool). `specs`: already-built specs (Python API) instead of OpenAI `tools` dicts.

        `max_tokens`: the reply's token budget; a constrained reply then always completes within
        it (BudgetError, a 400 on `max_tokens`, when even the shortest valid one cannot).
        `tokenizer`: the serving engine, when its grammars take token elements (llama.cpp), so
        the budget counts the literal parts of a reply in real tokens rather than bytes."""
        all_tools = list(specs) if specs is not None else (
            parse_tools(tools) if tools is not None else [])
        schema = response_format_schema(response_format)
        plan = cls(parallel=parallel_tool_calls is not False, response_schema=schema)
        mode, named = _choice(tool_choice, all_tools)
        plan.mode = mode
        if mode != "none":
            plan.tools = [t for t in all_tools if named is None or t.name == named]
            plan.declared = all_tools
            plan.parser = get_parser("json" if mode == "required" else parser)
        if mode == "required":
            if schema is not None:
                raise InvalidRequestError("response_format cannot be combined with a forced tool "
                                          "call (the reply is the call).",
                                          param="response_format")
            plan.constraint = tool_call_constraint(plan.tools, plan.parallel,
                                                   max_tokens=max_tokens, tokenizer=tokenizer)
            plan.constraint_param = "tool_choice"
        elif schema is not None:
            label = ((response_format.get("json_schema") or {}).get("name") or "response"
                     if isinstance(response_format, dict) else "response")
            if plan.active:
                # The model may call or answer: the grammar allows either.
                plan.constraint = _call_or_answer(plan.tools, plan.parallel, schema, label,
                                                  max_tokens, tokenizer)
            else:
                plan.constraint = json_constraint(schema, label, max_tokens=max_tokens,
                                                  tokenizer=tokenizer)
            plan.constraint_param = "response_format"
        return plan

    def check_engine(self, capabilities: Capabilities, model_name: str) -> None:
        if self.constraint is not None and not capabilities.constraints:
            raise UnsupportedError(f"the engine serving '{model_name}' cannot constrain "
                                   "generation with a grammar.", param=self.constraint_param)

    # --- replies ------------------------------------------------------------------------------
    def finish(self, text: str, finish_reason: FinishReason | None) -> Outcome:
        """The non-streaming path."""
        if not self.active:
            return self.answer(text, finish_reason)
        assert self.parser is not None
        result = self.parser.parse(text)
        return self._outcome(text, result.content, result.calls, finish_reason)

    def streamer(self) -> ToolStream:
        return ToolStream(self)

    def answer(self, text: str, finish_reason: FinishReason | None) -> Outcome:
        """The outcome of a reply that is not parsed for calls (a plain or structured answer)."""
        why = self.check_answer(text)
        return Outcome(text, [], finish_reason, why, "answer" if why is not None else None)

    def check_answer(self, text: str) -> str | None:
        """Why `text` is not a valid structured answer (None when it is, or none was asked)."""
        if self.response_schema is None:
            return None
        import json

        why: str | None
        try:
            value = json.loads(text)
        except ValueError as e:
            why = f"not JSON: {e}"
        else:
            why = validate_value(self.response_schema, value)
        if why is not None:
            log.info("structured answer does not validate (%s)", why[:200])
        return why

    def _valid(self, calls: list[ParsedCall]) -> str | None:
        """Why `calls` cannot be returned as calls (None: they can)."""
        if not calls:
            return "the reply holds no call"
        if len(calls) > 1 and not self.parallel:
            return f"the reply holds {len(calls)} calls and parallel_tool_calls is false"
        by_name = {t.name: t for t in self.tools}
        for c in calls:
            spec = by_name.get(c.name)
            if spec is None:
                return f"the reply calls {c.name[:64]!r}, which is not among the allowed tools"
            err = spec.validate(c.arguments)
            if err is not None:
                return f"the reply's arguments for {c.name!r} do not validate: {err[:200]}"
        return None

    def _outcome(self, text: str, content: str | None, calls: list[ParsedCall],
                 finish_reason: FinishReason | None) -> Outcome:
        why = self._valid(calls)
        if why is None:
            return Outcome(content, [tool_call_entry(c) for c in calls], "tool_calls")
        text = text.strip()
        if calls:  # the reply wrote calls that cannot leave as calls
            log.info("%s: returned as text", why)
            return Outcome(text or None, [], finish_reason, why, "call")
        why = self.check_answer(text)  # it answered instead of calling: a structured answer?
        return Outcome(text or None, [], finish_reason, why, "answer" if why is not None else None)


class ToolStream:
    """Streaming replies of one choice: prose deltas as they come, calls at the end."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        assert plan.parser is not None
        self._sp = StreamingParser(plan.parser)

    def feed(self, delta: str) -> str:
        return self._sp.feed(delta)

    def finish(self, finish_reason: FinishReason | None) -> tuple[str, Outcome]:
        """(content left to send, outcome)."""
        _, result = self._sp.finish()
        out = self.plan._outcome(self._sp.text, result.content, result.calls, finish_reason)
        return remainder(self._sp.sent, out.content), out


def _choice(tool_choice: Any, tools: list[ToolSpec]) -> tuple[Mode, str | None]:
    """(mode, named function) from OpenAI's tool_choice."""
    if tool_choice is None:
        return ("auto" if tools else "none"), None
    if not tools and tool_choice != "none":
        raise InvalidRequestError("tool_choice needs tools.", param="tool_choice")
    if tool_choice in ("none", "auto", "required"):
        return tool_choice, None
    if isinstance(tool_choice, dict) and tool_choice.get("type", "function") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise InvalidRequestError("tool_choice.function.name is required.",
                                      param="tool_choice.function.name")
        if name not in {t.name for t in tools}:
            raise InvalidRequestError(f"tool_choice names '{name[:64]}', which is not among the "
                                      "tools.", param="tool_choice.function.name")
        return "required", name
    raise InvalidRequestError("tool_choice must be 'none', 'auto', 'required' or "
                              '{"type": "function", "function": {"name": ...}}.',
                              param="tool_choice")


def _call_or_answer(tools: list[ToolSpec], parallel: bool, schema: dict[str, Any], label: str,
                    max_tokens: int | None, tokenizer: Tokenizer | None) -> Constraint:
    calls = call_schema(tools, parallel)
    defs = calls.pop("$defs")
    defs["answer"] = _rebase_refs(schema, "#/$defs/answer")  # its own $defs move along
    try:
        grammar = compile_schema({"anyOf": [calls, {"$ref": "#/$defs/answer"}], "$defs": defs},
                                 max_tokens=max_tokens, tokenizer=tokenizer, what="reply")
    except SchemaError:
        tool_call_constraint(tools, parallel)  # raises naming the tool if a tool is the cause
        json_constraint(schema, label)  # raises naming the schema if it is the cause
        raise InvalidRequestError("the tools and the response_format schema cannot be combined "
                                  "into one grammar.", param="response_format") from None
    return Constraint("grammar", grammar.text)
