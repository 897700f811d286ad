"""`gemmakit chat --tools FILE.py`: the conversation can call the `@gemmakit.tool` functions
defined in FILE.py; each call and its result are shown (on stderr) as they happen."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemmakit.errors import ConfigError

if TYPE_CHECKING:
    from gemmakit.pipeline import Pipeline
    from gemmakit.tools.runner import ToolEvent
    from gemmakit.types import Message, SamplingParams


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tools", metavar="FILE.py", help="Python file whose @gemmakit.tool functions "
                   "the model may call; each call and result is shown.")
    p.add_argument("--tool-choice", choices=("auto", "required"), default="auto",
                   help="With --tools: 'required' forces a call on the first step of each turn "
                   "(a grammar guarantees it is valid); default auto.")
    p.add_argument("--parallel-tool-calls", action=argparse.BooleanOptionalAction, default=True,
                   help="With --tools: allow several calls in one reply (default: yes).")
    p.add_argument("--max-tool-steps", type=int, default=6, metavar="N",
                   help="With --tools: most model steps per turn (the last one must answer).")


def load_tools(path: str) -> list[Any]:
    """The decorated functions defined in `path` (imported as a module: it is your code)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"tools file not found: {file}")
    spec = importlib.util.spec_from_file_location(f"gemmakit_user_tools_{uuid.uuid4().hex[:8]}",
                                                  file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"could not load {file.name}: {type(e).__name__}: {e}") from None
    found = [v for v in vars(module).values() if hasattr(v, "__gemmakit_tool__")]
    if not found:
        raise ConfigError(f"{file.name} defines no @gemmakit.tool functions")
    return found


def show(ev: ToolEvent) -> None:
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}"
                     for k, v in (ev.arguments or {}).items())
    print(f"[tool] {ev.name}({args})", file=sys.stderr)
    print(f"[tool] {'error' if ev.error else 'result'}: {ev.result}", file=sys.stderr)


async def answer(pipeline: Pipeline, history: list[Message], tools: list[Any],
                 sampling: SamplingParams, ns: argparse.Namespace) -> list[Message]:
    """Run one turn with tools; print the answer; return the conversation including it."""
    from gemmakit.tools.runner import arun_tools

    result = await arun_tools(pipeline, history, tools, sampling=sampling,
                              tool_choice=ns.tool_choice, max_steps=ns.max_tool_steps,
                              parallel_tool_calls=ns.parallel_tool_calls,
                              on_event=show)
    print(result.content or "")
    sys.stdout.flush()
    if result.finish_reason == "length":
        print("(reply cut at max_tokens)", file=sys.stderr)
    return result.messages
