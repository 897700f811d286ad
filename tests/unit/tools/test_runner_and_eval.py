"""The tool loop, the example tools and the evaluation, over the fake engine."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from gemmakit.compose import build_pipeline
from gemmakit.tools.examples import calculate_math, get_weather
from gemmakit.tools.runner import ToolRunner, arun_tools
from gemmakit.types import Capabilities


@pytest.fixture
def engine(fake_engine_class):
    return fake_engine_class(context_length=8192, capabilities=Capabilities(constraints=True))


def run(coro):
    return asyncio.run(coro)


class TestExamples:
    @pytest.mark.parametrize(("expr", "value"), [
        ("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("2 ** 10", 1024), ("7 / 2", 3.5),
        ("-3 + 5", 2), ("sqrt(16) + abs(-2)", 6), ("17 // 5 + 17 % 5", 5), ("round(pi, 2)", 3.14)])
    def test_calculate_math(self, expr, value):
        assert calculate_math(expr)["result"] == value

    @pytest.mark.parametrize("expr", ["__import__('os').system('true')", "open('x')", "a + 1",
                                      "2 ** 100000", "[1, 2]", "'a' * 3", "1 +"])
    def test_calculate_math_refuses_what_is_not_arithmetic(self, expr):
        with pytest.raises(ValueError):
            calculate_math(expr)

    def test_weather_from_the_stub_dataset(self):
        assert get_weather("  tokyo ")["temperature"] == 18.0
        assert get_weather("Tokyo", "fahrenheit")["temperature"] == 64.4
        with pytest.raises(LookupError, match="known cities"):
            get_weather("Atlantis")


class TestRunner:
    def test_errors_timeouts_and_bad_arguments_go_back_to_the_model(self):
        def slow(seconds: float) -> str:
            time.sleep(seconds)
            return "done"

        async def aslow(seconds: float) -> str:
            await asyncio.sleep(seconds)
            return "done"

        r = ToolRunner([calculate_math, slow, aslow], time_limit_s=0.2)
        ok = run(r.execute("1", "calculate_math", '{"expression": "6 * 7"}'))
        assert not ok.error and json.loads(ok.result)["result"] == 42
        err = run(r.execute("2", "calculate_math", '{"expression": "1 / 0"}'))
        assert err.error and "ZeroDivisionError" in json.loads(err.result)["error"]
        for name in ("slow", "aslow"):
            ev = run(r.execute("3", name, '{"seconds": 5}'))
            assert ev.error and "timed out" in json.loads(ev.result)["error"]
        bad = run(r.execute("4", "calculate_math", '{"expr": "1"}'))
        assert bad.error and "invalid arguments" in bad.result
        unknown = run(r.execute("5", "nope", "{}"))
        assert unknown.error and "unknown tool" in unknown.result

    def test_loop_calls_executes_feeds_back_and_answers(self, engine):
        engine.queue_text('{"name": "calculate_math", "parameters": {"expression": "6 * 7"}}')
        engine.queue_text("The answer is 42.")
        seen = []
        result = run(arun_tools(build_pipeline(engine, "g"), [{"role": "user", "content": "6*7?"}],
                                [calculate_math, get_weather], tool_choice="required",
                                on_event=seen.append))
        assert result.content == "The answer is 42." and result.steps == 2
        assert [e.name for e in seen] == ["calculate_math"]
        assert json.loads(seen[0].result) == {"expression": "6 * 7", "result": 42}
        first, second = engine.requests
        assert first.constraint is not None and second.constraint is None
        prompt = engine.detokenize(second.prompt_tokens)
        assert '```tool_output\n{"expression": "6 * 7", "result": 42}\n```' in prompt
        assert [m.role for m in result.messages] == ["user", "assistant", "tool", "assistant"]

    def test_the_last_step_must_answer(self, engine):
        call = '{"name": "calculate_math", "parameters": {"expression": "1"}}'
        for _ in range(3):
            engine.queue_text(call)
        result = run(arun_tools(build_pipeline(engine, "g"), [{"role": "user", "content": "go"}],
                                [calculate_math], max_steps=3))
        assert result.steps == 3 and len(result.events) == 2
        assert result.content == call  # step 3 had tool_choice none: text, not a call


class TestEvaluate:
    def test_set_loads_and_has_the_required_coverage(self):
        from pathlib import Path

        from gemmakit.tools.evaluate import load_set

        items = load_set(Path(__file__).parents[3] / "evals" / "tools.jsonl")
        assert len(items) >= 40
        cats = {i.category for i in items}
        assert {"single", "parallel", "no_call", "nested", "enum", "array", "bounds",
                "non_english"} <= cats
        from gemmakit.tools.schema import parse_tools

        for it in items:  # every expected call is itself valid against its tool
            specs = {s.name: s for s in parse_tools(it.tools)}
            for e in it.expected:
                assert specs[e["name"]].validate(e["arguments"]) is None, it.id

    def test_per_category_keeps_the_first_items_of_each(self):
        from pathlib import Path

        from gemmakit.tools.evaluate import load_set, pick

        items = load_set(Path(__file__).parents[3] / "evals" / "tools.jsonl")
        one = pick(items, 1)
        assert len(one) == len({i.category for i in items})
        assert [i.id for i in one] == [next(j.id for j in items if j.category == i.category)
                                       for i in one]
        assert pick(items, None) == items

    def test_scores_and_table(self, engine, tmp_path):
        from gemmakit.tools.evaluate import evaluate, load_set, table

        tool = {"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}
        path = tmp_path / "set.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in [
            {"define_tools": [tool]},
            {"id": "a", "messages": [{"role": "user", "content": "x=1"}], "tools": ["f"],
             "expected": [{"name": "f", "arguments": {"x": 1}}]},
            {"id": "b", "messages": [{"role": "user", "content": "hi"}], "tools": ["f"],
             "expected": []}]))
        items = load_set(path)
        engine.queue_text('{"name": "f", "parameters": {"x": 1}}')  # auto, a: exact
        engine.queue_text("hello")  # auto, b: right (no call)
        engine.queue_text('{"name": "f", "parameters": {"x": 2}}')  # required, a: wrong args
        scores = run(evaluate(build_pipeline(engine, "g"), items, ("auto", "required"), 64,
                              progress=False))
        a, r = scores["auto"], scores["required"]
        assert (a.valid, a.right, a.exact, a.n_call, a.n_scored) == (1, 2, 1, 1, 2)
        assert (r.valid, r.right, r.exact, r.n_call, r.n_scored) == (1, 1, 0, 1, 1)
        assert engine.requests[-1].constraint is not None
        t = table(scores, "g")
        assert "| auto | no | 100.0% (1/1) | 100.0% (2/2) | 100.0% (1/1) | 0/1 |" in t
        assert "| required | yes | 100.0% (1/1) | 100.0% (1/1) | 0.0% (0/1) | 0/1 |" in t
