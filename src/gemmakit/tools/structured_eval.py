"""Structured-output evaluation: how often a constrained reply is valid, on a corpus of JSON
schemas and on forced tool calls, at a given max_tokens.

    python -m gemmakit.tools.structured_eval corpus tests/data/pydantic_schemas.json
    python -m gemmakit.tools.structured_eval forced evals/tools.jsonl --max-tokens 48,96

Runs in-process through the request pipeline (as `gemmakit eval tools` does), greedily. `corpus`
takes JSON `[{"name", "prompt", "schema"}]` (tests/data/pydantic_models.py writes one from pydantic
models) and asks for each as `response_format` json_schema; `forced` runs the tool-calling set
(evals/tools.jsonl) in the constrained modes. `--no-budget` builds the constraints without the
max_tokens budget (gemmakit's behaviour before it), for comparison.

Figures: accepted (the schema is taken, without and with `strict`), refused (a 400 before
generation: max_tokens cannot hold the shortest valid reply), valid (the reply that leaves the
server is a call, or an answer, that jsonschema accepts), cut (stopped by max_tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemmakit.errors import ConfigError, GemmakitError, InvalidRequestError

if TYPE_CHECKING:
    from gemmakit.pipeline import Pipeline
    from gemmakit.tools.chat import ToolPlan
    from gemmakit.tools.evaluate import Item

HELP = "Structured-output evaluation: accepted, refused, valid and cut shares."
FORCED_MODES = ("required", "required_parallel", "named", "json_schema")
"""`required` allows parallel calls only where the item expects several (as `gemmakit eval
tools`); `required_parallel` always allows them (the API's default)."""


@dataclass
class Tally:
    n: int = 0
    refused: int = 0
    valid: int = 0
    cut: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def share(self, k: int) -> str:
        return f"{100 * k / self.n:.1f}% ({k}/{self.n})" if self.n else "n/a"

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.n += 1
        self.refused += row.get("refused") is not None
        self.valid += bool(row.get("valid"))
        self.cut += row.get("finish_reason") == "length"


def _tokenizer(pipeline: Pipeline, use: bool) -> Any:
    """The engine, when its grammars take token elements (Capabilities.grammar_tokens)."""
    return pipeline.grammar_tokenizer if use else None


async def _generate(pipeline: Pipeline, plan: ToolPlan, messages: list[dict[str, Any]],
                    max_tokens: int) -> Any:
    from gemmakit.pipeline import Caller, ChatJob
    from gemmakit.tools.runner import _to_message
    from gemmakit.types import SamplingParams

    run = pipeline.begin(Caller(f"eval-{uuid.uuid4().hex[:12]}", endpoint="eval structured"))
    await run.chat(ChatJob([_to_message(m) for m in messages],
                           SamplingParams(max_tokens=max_tokens, temperature=0), plan=plan))
    (result,) = await run.collect()
    return result


# --- a corpus of schemas ----------------------------------------------------------------------
def load_corpus(path: str | Path) -> list[dict[str, Any]]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"corpus not found: {file}")
    items = json.loads(file.read_text("utf-8"))
    if not isinstance(items, list) or not all(isinstance(i, dict) and "schema" in i
                                              for i in items):
        raise ConfigError(f"{file.name}: expected a list of {{name, prompt, schema}}")
    return items


def acceptance(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Which schemas are taken without and with strict (no model needed)."""
    from gemmakit.tools.schema import SchemaError, check_schema

    out: dict[str, Any] = {"n": len(items), "accepted": 0, "strict": 0, "post_checked": {}}
    for it in items:
        try:
            plan = check_schema(it["schema"])
        except SchemaError:
            continue
        out["accepted"] += 1
        if plan.post_checked or plan.unknown:
            out["post_checked"][it.get("name", "?")] = list(plan.post_checked + plan.unknown)
        else:
            out["strict"] += 1
    return out


async def run_corpus(pipeline: Pipeline, items: list[dict[str, Any]], max_tokens: int,
                     budget: bool, tokens: bool, progress: bool = True) -> Tally:
    from gemmakit.tools.chat import ToolPlan

    tally = Tally()
    for k, it in enumerate(items):
        name = it.get("name", f"#{k}")
        rf = {"type": "json_schema", "json_schema": {"name": name, "schema": it["schema"]}}
        try:
            plan = ToolPlan.build(response_format=rf,
                                  max_tokens=max_tokens if budget else None,
                                  tokenizer=_tokenizer(pipeline, tokens))
        except InvalidRequestError as e:
            tally.add({"name": name, "refused": e.message})
            continue
        messages = [{"role": "system", "content": "Reply with one JSON object and nothing else."},
                    {"role": "user", "content": it.get("prompt") or f"An example {name}."}]
        result = await _generate(pipeline, plan, messages, max_tokens)
        invalid = plan.check_answer(result.text)
        tally.add({"name": name, "valid": invalid is None, "invalid": invalid,
                   "finish_reason": result.finish_reason, "tokens": len(result.token_ids),
                   "reply": result.text})
        if progress:
            print(f"\rcorpus: {k + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return tally


# --- forced calls on the tools set ----------------------------------------------------------------
def _forced_plan(item: Item, mode: str, max_tokens: int | None, tokenizer: Any) -> ToolPlan:
    from gemmakit.tools.chat import ToolPlan
    from gemmakit.tools.constraints import call_schema
    from gemmakit.tools.schema import parse_tools

    parallel = mode == "required_parallel" or len(item.expected) > 1
    if mode == "json_schema":
        schema = call_schema(parse_tools(item.tools), parallel)
        plan = ToolPlan.build(response_format={"type": "json_schema", "json_schema": {
            "name": "tool_call", "schema": schema, "strict": True}},
            max_tokens=max_tokens, tokenizer=tokenizer)
        plan.declared = parse_tools(item.tools)  # shown in the prompt, answered as JSON
        return plan
    choice: Any = "required" if mode != "named" else {
        "type": "function", "function": {"name": item.expected[0]["name"]}}
    return ToolPlan.build(tools=item.tools, tool_choice=choice, parallel_tool_calls=parallel,
                          max_tokens=max_tokens, tokenizer=tokenizer)


async def run_forced(pipeline: Pipeline, items: list[Item], modes: tuple[str, ...],
                     max_tokens: int, budget: bool, tokens: bool,
                     progress: bool = True) -> dict[str, Tally]:
    tallies = {m: Tally() for m in modes}
    calls = [it for it in items if it.expected]
    for mode in modes:
        for k, it in enumerate(calls):
            try:
                plan = _forced_plan(it, mode, max_tokens if budget else None,
                                    _tokenizer(pipeline, tokens))
            except InvalidRequestError as e:
                tallies[mode].add({"id": it.id, "refused": e.message})
                continue
            result = await _generate(pipeline, plan, it.messages, max_tokens)
            valid = (plan.check_answer(result.text) is None if mode == "json_schema"
                     else bool(result.tool_calls))
            tallies[mode].add({"id": it.id, "valid": valid, "finish_reason": result.finish_reason,
                               "tokens": len(result.token_ids), "reply": result.text})
            if progress:
                print(f"\r{mode} {max_tokens}: {k + 1}/{len(calls)}", end="", file=sys.stderr,
                      flush=True)
        if progress:
            t = tallies[mode]
            print(f"\r{mode} max_tokens {max_tokens}: valid {t.share(t.valid)}, refused "
                  f"{t.refused}, cut {t.cut}", file=sys.stderr, flush=True)
    return tallies


# --- command line -------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    from gemmakit.cli.common import ENGINE_FLAGS, settings_flags

    p.add_argument("what", choices=("corpus", "forced"),
                   help="corpus: a JSON list of schemas; forced: the tool-calling set.")
    p.add_argument("file", metavar="FILE", help="The corpus (.json) or the set (.jsonl).")
    p.add_argument("--max-tokens", default="256", metavar="N[,N...]",
                   help="Most tokens per reply; several, comma-separated, run one after the "
                        "other (default 256).")
    p.add_argument("--modes", default=",".join(FORCED_MODES),
                   help=f"forced: modes to run (default {','.join(FORCED_MODES)}).")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="Only the first N schemas or items.")
    p.add_argument("--no-budget", action="store_true",
                   help="Constraints without the max_tokens budget (the behaviour before it).")
    p.add_argument("--no-token-literals", action="store_true",
                   help="Count literals in bytes even where the engine takes token elements.")
    p.add_argument("--output", metavar="FILE.json", help="Also write every reply to this file.")
    settings_flags(p, ENGINE_FLAGS)


def run(ns: argparse.Namespace) -> int:
    from gemmakit import compose
    from gemmakit.cli.common import load_settings

    budgets = [int(x) for x in str(ns.max_tokens).split(",") if x.strip()]
    budget, tokens = not ns.no_budget, not ns.no_token_literals
    label = "budgeted" if budget else "not budgeted"
    if ns.what == "corpus":
        items = load_corpus(ns.file)[: ns.limit]
        acc = acceptance(items)
        print(f"Corpus {Path(ns.file).name}: {acc['n']} schemas, accepted "
              f"{acc['accepted']}/{acc['n']}, accepted with strict {acc['strict']}/{acc['n']}")
        for name, kws in acc["post_checked"].items():
            print(f"  checked after generation: {name}: {', '.join(kws)}")
    else:
        from gemmakit.tools.evaluate import load_set

        sets = load_set(ns.file)[: ns.limit]
        modes = tuple(m.strip() for m in ns.modes.split(",") if m.strip())
        bad = [m for m in modes if m not in FORCED_MODES]
        if bad:
            raise ConfigError(f"unknown mode '{bad[0]}' (modes: {', '.join(FORCED_MODES)})")
    pipeline = compose.load(load_settings(ns))
    out: dict[str, Any] = {}

    async def go() -> None:
        try:
            for n in budgets:
                if ns.what == "corpus":
                    t = await run_corpus(pipeline, items, n, budget, tokens)
                    print(f"\nmax_tokens {n}, {label}: valid {t.share(t.valid)}, refused "
                          f"{t.share(t.refused)}, cut by max_tokens {t.share(t.cut)}")
                    out[str(n)] = t.rows
                else:
                    tallies = await run_forced(pipeline, sets, modes, n, budget, tokens)
                    print(f"\nmax_tokens {n}, {label}:\n\n| mode | valid | refused (400) | cut "
                          "by max_tokens |\n|---|---|---|---|")
                    for mode, t in tallies.items():
                        print(f"| {mode} | {t.share(t.valid)} | {t.refused} | {t.cut} |")
                    out[str(n)] = {m: t.rows for m, t in tallies.items()}
        finally:
            await pipeline.aclose()

    asyncio.run(go())
    if ns.output:
        Path(ns.output).write_text(json.dumps(out, ensure_ascii=False, indent=1), "utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gemmakit.tools.structured_eval", description=HELP)
    add_arguments(p)
    ns = p.parse_args(argv)
    try:
        return run(ns)
    except GemmakitError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
