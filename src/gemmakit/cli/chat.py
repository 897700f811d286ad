"""`gemmakit chat` (multi-turn REPL or one-shot), in-process: the same request pipeline the server uses,
with no HTTP in between. `gemmakit complete` shares it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from gemmakit.cli import tools as tool_flags
from gemmakit.cli.common import ENGINE_FLAGS, SAMPLING_SKIP, load_settings, settings_flags
from gemmakit.cli.flags import add_model_flags, build
from gemmakit.errors import GemmakitError
from gemmakit.pipeline import Caller, ChatJob, CompletionJob, Run
from gemmakit.types import Message, SamplingParams

if TYPE_CHECKING:
    from gemmakit.pipeline import Pipeline

HELP = "Chat in the terminal (multi-turn; or one-shot with a question)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", help="Ask once, print the answer and exit.")
    p.add_argument("--system", help="System prompt (folded into the first user turn, as Gemma "
                   "has no system role).")
    add_engine_and_sampling_flags(p)
    tool_flags.add_arguments(p)


def add_engine_and_sampling_flags(p: argparse.ArgumentParser) -> None:
    settings_flags(p, ENGINE_FLAGS)
    add_model_flags(p, SamplingParams, skip=SAMPLING_SKIP)

_HELP = "Commands: /reset (forget the conversation), /bye or Ctrl-D (quit), /help."


async def _print_stream(run: Run) -> tuple[str, str | None]:
    text, finish = "", None
    async for d in run.stream():
        if d.text:
            sys.stdout.write(d.text)
            sys.stdout.flush()
            text += d.text
        finish = d.finish_reason or finish
    sys.stdout.write("\n")
    sys.stdout.flush()
    return text, finish


async def _chat(pipeline: Pipeline, ns: argparse.Namespace, sampling: SamplingParams) -> int:
    system = [Message("system", ns.system)] if getattr(ns, "system", None) else []

    def begin() -> Run:
        return pipeline.begin(Caller(endpoint=f"cli {ns.command}"))

    if ns.command == "complete":
        run = begin()
        await run.complete(CompletionJob([ns.prompt], sampling))
        await _print_stream(run)
        return 0
    tools = tool_flags.load_tools(ns.tools) if getattr(ns, "tools", None) else None
    if tools and ns.prompt is not None:
        await tool_flags.answer(pipeline, [*system, Message("user", ns.prompt)], tools, sampling,
                                ns)
        return 0
    if ns.prompt is not None:
        run = begin()
        await run.chat(ChatJob([*system, Message("user", ns.prompt)], sampling))
        await _print_stream(run)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"gemmakit chat with {pipeline.model_name}. {_HELP}", file=sys.stderr)
    history: list[Message] = []
    while True:
        try:
            line = await asyncio.to_thread(input, ">>> " if interactive else "")
        except EOFError:
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/bye", "/exit", "/quit"):
            return 0
        if line == "/reset":
            history.clear()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if line == "/help":
            print(_HELP, file=sys.stderr)
            continue
        turn = [*history, Message("user", line)]
        if tools:
            try:
                history = (await tool_flags.answer(pipeline, [*system, *turn], tools, sampling,
                                                   ns))[len(system):]
            except GemmakitError as e:
                print(f"error: {e.message}", file=sys.stderr)
            continue
        run = begin()
        try:
            await run.chat(ChatJob([*system, *turn], sampling))
        except GemmakitError as e:
            print(f"error: {e.message}", file=sys.stderr)
            continue
        reply, finish = await _print_stream(run)
        if finish == "length":
            print("(reply cut at max_tokens)", file=sys.stderr)
        history = [*turn, Message("assistant", reply)]


def run(ns: argparse.Namespace) -> int:
    from gemmakit import compose

    sampling = build(SamplingParams, ns)
    settings = load_settings(ns)
    plan = compose.plan(settings)
    if plan.profile is not None:
        print(f"profile: {plan.profile}", file=sys.stderr)
    pipeline = plan.pipeline(plan.load_engine())

    async def go() -> int:
        try:
            return await _chat(pipeline, ns, sampling)
        finally:
            await pipeline.aclose()

    return asyncio.run(go())
