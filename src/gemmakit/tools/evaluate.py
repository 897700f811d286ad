"""`gemmakit eval tools SET.jsonl`: how well the model calls tools, with and without constraints.

Runs in-process on the configured engine (the same request pipeline the server uses, no HTTP: the figures
measure the model and the constraint machinery, not the network), greedy (temperature 0) so a run
is repeatable. The set is JSON lines:

    {"define_tools": [OpenAI tool objects]}                       # one or more, before the items
    {"id": "...", "category": "single", "messages": [...], "tools": ["get_weather", ...],
     "expected": [{"name": "get_weather", "arguments": {"location": "Tokyo"}}]}   # [] = no call

Each item runs in each mode:

| mode          | how                                                                      |
|---------------|--------------------------------------------------------------------------|
| `auto`        | tool_choice auto, no constraint: the reply is parsed (the comparison row) |
| `required`    | tool_choice required: grammar over all the item's tools                   |
| `named`       | tool_choice naming the first expected function: grammar for that tool     |
| `json_schema` | no tools; response_format json_schema = the call schema; content parsed   |

Rates (items that expect a call; `auto` also scores no-call items for the right-function rate):
- schema-valid: the raw reply holds at least one call, every call names a given tool, and every
  call's arguments validate against that tool's schema (jsonschema);
- right function: the called names equal the expected ones (as a multiset; no call when none is
  expected);
- argument exact match: right function and every call's arguments equal the expected JSON exactly.

"cut by max_tokens" counts call items whose reply hit the token limit: a constrained reply is valid
by construction only once the grammar has finished it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemmakit.errors import ConfigError, GemmakitError

if TYPE_CHECKING:
    from gemmakit.pipeline import Pipeline

MODES = ("auto", "required", "named", "json_schema")
HELP = "Tool-calling evaluation: schema-valid, right-function and argument exact-match rates."


@dataclass
class Item:
    id: str
    category: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    expected: list[dict[str, Any]]


@dataclass
class Score:
    n_call: int = 0  # items expecting a call
    n_scored: int = 0  # items counted for right-function
    valid: int = 0
    right: int = 0
    exact: int = 0
    cut: int = 0  # replies to call items stopped by max_tokens (a cut reply cannot be valid)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def rate(self, k: int, n: int) -> str:
        return f"{100 * k / n:.1f}% ({k}/{n})" if n else "n/a"


def load_set(path: str | Path) -> list[Item]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"evaluation set not found: {file}")
    defined: dict[str, dict[str, Any]] = {}
    items: list[Item] = []
    for n, line in enumerate(file.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"{file.name}:{n}: not JSON ({e})") from None
        if "define_tools" in rec:
            for t in rec["define_tools"]:
                defined[t["function"]["name"]] = t
            continue
        try:
            tools = [defined[name] for name in rec["tools"]]
            items.append(Item(rec["id"], rec.get("category", ""), rec["messages"], tools,
                              rec["expected"]))
        except KeyError as e:
            raise ConfigError(f"{file.name}:{n}: missing or unknown {e}") from None
    if not items:
        raise ConfigError(f"{file.name} holds no items")
    return items


def pick(items: list[Item], per_category: int | None) -> list[Item]:
    """The first `per_category` items of each category, in set order (all when None)."""
    if per_category is None:
        return items
    seen: Counter[str] = Counter()
    out = []
    for it in items:
        seen[it.category] += 1
        if seen[it.category] <= per_category:
            out.append(it)
    return out


def _canon(name: str, args: Any) -> tuple[str, str]:
    return name, json.dumps(args, sort_keys=True, ensure_ascii=False)


def score_reply(item: Item, text: str, mode: str, parser_name: str) -> dict[str, Any]:
    """Score one raw reply (see the module docstring for the definitions)."""
    from gemmakit.tools.parsers import get_parser
    from gemmakit.tools.schema import parse_tools

    specs = {s.name: s for s in parse_tools(item.tools)}
    parser = get_parser("json" if mode != "auto" else parser_name)
    calls = parser.parse(text).calls
    valid = bool(calls) and all(c.name in specs and specs[c.name].validate(c.arguments) is None
                                for c in calls)
    got = Counter(_canon(c.name, c.arguments) for c in calls)
    want = Counter(_canon(e["name"], e["arguments"]) for e in item.expected)
    right = Counter(c.name for c in calls) == Counter(e["name"] for e in item.expected)
    return {"id": item.id, "category": item.category, "mode": mode, "valid": valid,
            "right": right, "exact": right and got == want,
            "calls": [{"name": c.name, "arguments": c.arguments} for c in calls],
            "reply": text}


async def run_item(pipeline: Pipeline, item: Item, mode: str, max_tokens: int
                   ) -> dict[str, Any]:
    from gemmakit.pipeline import Caller, ChatJob
    from gemmakit.tools.chat import ToolPlan
    from gemmakit.tools.constraints import call_schema
    from gemmakit.tools.runner import _to_message
    from gemmakit.tools.schema import parse_tools
    from gemmakit.types import SamplingParams

    parallel = len(item.expected) > 1
    if mode == "json_schema":
        schema = call_schema(parse_tools(item.tools), parallel)
        plan = ToolPlan.build(response_format={"type": "json_schema", "json_schema": {
            "name": "tool_call", "schema": schema, "strict": True}}, max_tokens=max_tokens,
            tokenizer=pipeline.grammar_tokenizer)
        plan.declared = parse_tools(item.tools)  # shown in the prompt, answered as JSON
    else:
        choice: Any = mode if mode != "named" else {
            "type": "function", "function": {"name": item.expected[0]["name"]}}
        plan = ToolPlan.build(tools=item.tools, tool_choice=choice, parallel_tool_calls=parallel,
                              parser=pipeline.service.tool_parser, max_tokens=max_tokens,
                              tokenizer=pipeline.grammar_tokenizer)
    run = pipeline.begin(Caller(f"eval-{uuid.uuid4().hex[:12]}", endpoint="eval tools"))
    await run.chat(ChatJob([_to_message(m) for m in item.messages],
                           SamplingParams(max_tokens=max_tokens, temperature=0), plan=plan))
    (result,) = await run.collect()
    row = score_reply(item, result.text, mode, pipeline.service.tool_parser)
    row["finish_reason"] = result.finish_reason
    return row


async def evaluate(pipeline: Pipeline, items: list[Item], modes: tuple[str, ...],
                   max_tokens: int, progress: bool = True) -> dict[str, Score]:
    scores = {m: Score() for m in modes}
    for mode in modes:
        for k, item in enumerate(items):
            expects = bool(item.expected)
            if not expects and mode != "auto":
                continue  # a forced call cannot be the right answer to a no-call item
            row = await run_item(pipeline, item, mode, max_tokens)
            s = scores[mode]
            s.rows.append(row)
            s.n_scored += 1
            s.right += row["right"]
            if expects:
                s.n_call += 1
                s.valid += row["valid"]
                s.exact += row["exact"]
                s.cut += row["finish_reason"] == "length"
            if progress:
                print(f"\r{mode}: {k + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
        if progress:  # the mode's row now, so a long run shows results as it goes
            s = scores[mode]
            print(f"\r{mode}: schema-valid {s.rate(s.valid, s.n_call)}, right function "
                  f"{s.rate(s.right, s.n_scored)}, exact arguments {s.rate(s.exact, s.n_call)}",
                  file=sys.stderr, flush=True)
    return scores


def table(scores: dict[str, Score], model: str) -> str:
    lines = [f"Tool-calling evaluation, model {model}, greedy",
             "",
             "| mode | constrained | schema-valid | right function | argument exact match "
             "| cut by max_tokens |",
             "|---|---|---|---|---|---|"]
    for mode, s in scores.items():
        lines.append(f"| {mode} | {'no' if mode == 'auto' else 'yes'} | "
                     f"{s.rate(s.valid, s.n_call)} | {s.rate(s.right, s.n_scored)} | "
                     f"{s.rate(s.exact, s.n_call)} | {s.cut}/{s.n_call} |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gemmakit.cli.common import ENGINE_FLAGS, settings_flags

    p.add_argument("set", metavar="SET.jsonl", help="Evaluation set (see docs/tools.md).")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"Comma-separated modes to run (default: {','.join(MODES)}).")
    p.add_argument("--max-tokens", type=int, default=160,
                   help="Most tokens per reply (default 160).")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="Only the first N items of the set.")
    p.add_argument("--per-category", type=int, default=None, metavar="N",
                   help="Only the first N items of each category (a quick, balanced run).")
    p.add_argument("--output", metavar="FILE.json",
                   help="Also write every reply and its scores to this JSON file.")
    p.add_argument("--adapter", metavar="NAME", help="Evaluate the model with this stored LoRA "
                   "adapter (gemmakit finetune; it must have been trained on --model).")
    settings_flags(p, ENGINE_FLAGS)


def run(ns: argparse.Namespace) -> int:
    from gemmakit import compose
    from gemmakit.cli.common import load_settings

    modes = tuple(m.strip() for m in ns.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ConfigError(f"unknown mode '{bad[0]}' (modes: {', '.join(MODES)})")
    items = pick(load_set(ns.set), ns.per_category)[: ns.limit]
    settings = load_settings(ns)
    pipeline = compose.load(settings)
    if ns.adapter:
        pipeline = _with_adapter(pipeline, ns.adapter, settings.home)

    async def go() -> dict[str, Score]:
        try:
            return await evaluate(pipeline, items, modes, ns.max_tokens)
        finally:
            await pipeline.aclose()

    scores = asyncio.run(go())
    print(table(scores, pipeline.model_name))
    if ns.output:
        Path(ns.output).write_text(json.dumps(
            {m: s.rows for m, s in scores.items()}, ensure_ascii=False, indent=1), "utf-8")
    return 0


def _with_adapter(pipeline: Pipeline, name: str, home: Path) -> Pipeline:
    """The pipeline serving `name` on `pipeline`'s engine (as `serve --adapters` does)."""
    from gemmakit.finetune import store
    from gemmakit.pipeline import Pipeline

    adapter = store.get(home, name)
    pipeline.service.engine.load_adapter(adapter)
    return Pipeline(pipeline.service.for_adapter(name), pipeline.safety, pipeline.sinks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gemmakit.tools.evaluate", description=HELP)
    add_arguments(p)
    ns = p.parse_args(argv)
    try:
        return run(ns)
    except GemmakitError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
