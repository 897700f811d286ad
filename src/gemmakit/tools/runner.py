"""Run Python tools for the model: model -> calls -> execute -> results -> model, until it answers.

Each call runs with a time limit; an exception, a timeout or arguments that do not validate are
returned to the model as a tool error (``{"error": "..."}``) rather than raised, so the model can
correct itself. Synchronous tools run in a worker thread (Python cannot kill a thread: a sync tool
that overruns is abandoned, not stopped — write long-running tools as ``async def``, which are
cancelled).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gemmakit.errors import InvalidRequestError
from gemmakit.pipeline import Caller, ChatJob
from gemmakit.tools.chat import ToolPlan
from gemmakit.tools.schema import ToolSpec, as_spec
from gemmakit.types import Message, SamplingParams, TextPart, ToolCall

if TYPE_CHECKING:
    from gemmakit.pipeline import Pipeline

DEFAULT_TIME_LIMIT_S = 10.0
DEFAULT_MAX_STEPS = 6


@dataclass
class ToolEvent:
    """One executed call, for display and inspection."""

    id: str
    name: str
    arguments: Any
    result: str
    error: bool


@dataclass
class RunResult:
    content: str | None
    """The model's final answer (None if it stopped without text)."""
    messages: list[Message]
    """The whole conversation, tool calls and results included."""
    events: list[ToolEvent] = field(default_factory=list)
    steps: int = 0
    finish_reason: str | None = None


def _to_message(m: Any) -> Message:
    if isinstance(m, Message):
        return m
    if not isinstance(m, dict) or "role" not in m:
        raise InvalidRequestError("messages must be gemmakit Messages or OpenAI-style dicts.",
                                  param="messages")
    calls = tuple(ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments", "{}"))
                  for c in m.get("tool_calls") or ())
    content = m.get("content")
    if isinstance(content, list):
        content = [TextPart(p["text"]) for p in content if p.get("type") == "text"]
    return Message(m["role"], content, tool_calls=calls, tool_call_id=m.get("tool_call_id"),
                   name=m.get("name"))


def _result_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


class ToolRunner:
    """Executes calls against registered Python functions."""

    def __init__(self, tools: Sequence[Any], *, time_limit_s: float = DEFAULT_TIME_LIMIT_S):
        self.specs: list[ToolSpec] = [as_spec(t) for t in tools]
        self.by_name = {s.name: s for s in self.specs}
        if len(self.by_name) != len(self.specs):
            raise ValueError("two tools have the same name")
        missing = [s.name for s in self.specs if s.function is None]
        if missing:
            raise ValueError(f"tool '{missing[0]}' has no Python function to run")
        self.time_limit_s = time_limit_s

    async def execute(self, call_id: str, name: str, arguments_json: str) -> ToolEvent:
        spec = self.by_name.get(name)
        try:
            args = json.loads(arguments_json)
        except ValueError:
            args = None
        if spec is None:
            return ToolEvent(call_id, name, args, _error(f"unknown tool '{name}'"), True)
        problem = "arguments are not a JSON object" if not isinstance(args, dict) \
            else spec.validate(args)
        if problem is not None:
            return ToolEvent(call_id, name, args, _error(f"invalid arguments: {problem}"), True)
        fn = spec.function
        assert fn is not None
        try:
            if inspect.iscoroutinefunction(fn):
                value = await asyncio.wait_for(fn(**args), self.time_limit_s)
            else:
                value = await asyncio.wait_for(asyncio.to_thread(fn, **args), self.time_limit_s)
        except TimeoutError:
            return ToolEvent(call_id, name, args,
                             _error(f"timed out after {self.time_limit_s:g} s"), True)
        except Exception as e:  # the model sees the error and may try again
            return ToolEvent(call_id, name, args, _error(f"{type(e).__name__}: {e}"), True)
        return ToolEvent(call_id, name, args, _result_text(value), False)


def _error(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)


async def arun_tools(pipeline: Pipeline, messages: Sequence[Any], tools: Sequence[Any], *,
                     sampling: SamplingParams | None = None, tool_choice: Any = "auto",
                     parallel_tool_calls: bool = True, max_steps: int = DEFAULT_MAX_STEPS,
                     time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                     on_event: Callable[[ToolEvent], None] | None = None) -> RunResult:
    """The tool loop over an in-process request pipeline (`gemmakit.compose.load`).

    `tool_choice` applies to the first step (e.g. "required" to make sure a weak model calls);
    later steps use "auto", and the last of `max_steps` uses "none" so the run ends with an
    answer."""
    if max_steps < 1:
        raise ValueError("max_steps must be at least 1")
    runner = ToolRunner(tools, time_limit_s=time_limit_s)
    sampling = sampling or SamplingParams(max_tokens=256)
    convo = [_to_message(m) for m in messages]
    events: list[ToolEvent] = []
    for step in range(1, max_steps + 1):
        choice = tool_choice if step == 1 else "auto"
        if step == max_steps:
            choice = "none"
        plan = ToolPlan.build(specs=runner.specs, tool_choice=choice,
                              parallel_tool_calls=parallel_tool_calls,
                              parser=pipeline.service.tool_parser,
                              max_tokens=sampling.max_tokens, tokenizer=pipeline.grammar_tokenizer)
        # Declarations stay in the prompt on the last step: the history holds calls.
        plan.declared = list(runner.specs)
        run = pipeline.begin(Caller(f"tools-{uuid.uuid4().hex[:12]}", endpoint="run_tools"))
        await run.chat(ChatJob(convo, sampling, plan=plan))
        (out,) = await run.collect()
        if not out.tool_calls:
            convo.append(Message("assistant", out.content or ""))
            return RunResult(out.content, convo, events, step, out.finish_reason)
        calls = tuple(ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
                      for c in out.tool_calls)
        convo.append(Message("assistant", out.content, tool_calls=calls))
        for c in calls:
            ev = await runner.execute(c.id, c.name, c.arguments)
            events.append(ev)
            if on_event is not None:
                on_event(ev)
            convo.append(Message("tool", ev.result, tool_call_id=c.id, name=c.name))
    raise AssertionError("unreachable: the last step never calls")  # pragma: no cover


def run_tools(messages: Sequence[Any], tools: Sequence[Any], *,
              pipeline: Pipeline | None = None, model: str | None = None,
              **kwargs: Any) -> RunResult:
    """Blocking tool loop. Without `pipeline`, loads `model` (default: the settings' model, i.e.
    the bundled Gemma 3 270M) in-process for the run and closes it after."""
    if pipeline is not None:
        return asyncio.run(arun_tools(pipeline, messages, tools, **kwargs))
    from gemmakit import compose
    from gemmakit.settings import Settings

    loaded = compose.load(Settings.load(model=model))

    async def go() -> RunResult:
        try:
            return await arun_tools(loaded, messages, tools, **kwargs)
        finally:
            await loaded.aclose()

    return asyncio.run(go())
