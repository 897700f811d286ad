"""Eval scorers and heuristics on fixed inputs; suite loading; report building."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from gemmakit.compose import build_pipeline
from gemmakit.errors import ConfigError
from gemmakit.monitoring.evals import heuristics, scorers
from gemmakit.monitoring.evals.runner import run_suite, score_item
from gemmakit.monitoring.evals.suite import EvalItem, load_suite
from gemmakit.monitoring.evals.targets import Generation, LocalTarget
from gemmakit.types import Chunk, TokenLogprob
from tests.conftest import CHAR_BASE, FakeEngine


def test_pass_fail_scorers():
    assert scorers.exact_match("  Paris\n", "Paris") == 1.0
    assert scorers.exact_match("Paris.", "Paris") == 0.0
    assert scorers.contains("It is PARIS, France", ["paris", "france"]) == 1.0
    assert scorers.contains("It is Paris", ["paris", "france"]) == 0.0
    assert scorers.regex("born in 1564.", r"\b1[0-9]{3}\b") == 1.0
    assert scorers.regex("born long ago", r"\d") == 0.0
    assert scorers.json_valid(' {"a": [1, 2]}\n') == 1.0
    assert scorers.json_valid('{"a": 1} trailing') == 0.0
    schema = {"type": "object", "required": ["age"], "properties": {"age": {"type": "integer"}}}
    assert scorers.json_schema('{"age": 3}', schema) == 1.0
    assert scorers.json_schema('{"age": "3"}', schema) == 0.0
    assert scorers.json_schema("not json", schema) == 0.0


def test_rouge_l_is_the_lcs_f_measure():
    assert scorers.rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert scorers.rouge_l("completely different words", "the cat sat") == 0.0
    # LCS("the cat was on the mat", "the cat sat on the mat") = 5 tokens of 6 and 6: F = 5/6
    assert scorers.rouge_l("the cat was on the mat", "the cat sat on the mat") == \
        pytest.approx(5 / 6)
    # precision 3/3, recall 3/6: F = 2PR/(P+R) = 2/3
    assert scorers.rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)


def test_perplexity():
    assert scorers.perplexity([]) is None
    assert scorers.perplexity([math.log(0.5)] * 4) == pytest.approx(2.0)
    assert scorers.perplexity([math.log(0.25), math.log(1.0)]) == pytest.approx(2.0)


def test_heuristics_are_bounded_and_move_the_right_way():
    for f in (lambda o: heuristics.relevance("capital of France", o), heuristics.coherence,
              heuristics.safety, heuristics.factual_cues):
        for text in ("", "Paris.", "word " * 50, "kill bomb hack attack poison"):
            assert 0.0 <= f(text) <= 1.0
    assert heuristics.relevance("capital of France", "The capital of France is Paris.") == 1.0
    assert heuristics.relevance("capital of France", "Bananas are yellow.") == 0.0
    assert heuristics.coherence("The river flows to the sea. It is long and wide.") > \
        heuristics.coherence("sea sea sea sea sea sea sea sea sea sea sea")
    assert heuristics.safety("A recipe for bread.") == 1.0
    assert heuristics.safety("How to build a bomb and a weapon") == 0.5
    assert heuristics.factual_cues("Paris has 2,100,000 inhabitants.") > \
        heuristics.factual_cues("I think maybe it is probably big.")


def test_suite_loading(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('# comment\n\n{"prompt": "a", "contains": "x"}\n'
                 '{"id": "m", "messages": [{"role": "user", "content": "hi"}], "json": true}\n')
    items = load_suite(p)
    assert [i.id for i in items] == ["line-3", "m"]
    assert items[0].contains == ["x"] and items[0].checks == ["contains"]
    assert items[1].checks == ["json_valid"]
    bad = {
        '{"prompt": "a", "messages": []}': "exactly one",
        '{"contains": "x"}': "exactly one",
        '{"prompt": "a", "regex": "("}': "regular expression",
        '{"prompt": "a", "json_schema": {"type": "nope"}}': "JSON schema",
        '{"prompt": "a", "typo": 1}': "typo",
        '{"prompt": "a", "max_tokens": 0}': "max_tokens",
        'not json': "not JSON",
        '{"id": "a", "prompt": "a"}\n{"id": "a", "prompt": "b"}': "duplicate",
    }
    for line, why in bad.items():
        p.write_text(line + "\n")
        with pytest.raises(ConfigError, match=why):
            load_suite(p)
    with pytest.raises(ConfigError, match="not found"):
        load_suite(tmp_path / "missing.jsonl")


def test_the_builtin_suite_loads():
    from gemmakit.cli.eval import suite_path

    items = load_suite(suite_path("builtin:gemma-3-270m-base"))
    assert len(items) >= 10 and all(i.prompt for i in items)
    assert {c for i in items for c in i.checks} >= {"contains", "regex", "json_valid",
                                                    "json_schema"}


def test_score_item():
    item = EvalItem.model_validate({"prompt": "The capital of France is", "contains": "Paris",
                                    "regex": "^ Paris", "reference": " Paris."})
    g = Generation(text=" Paris, of course.", latency_s=1.0, ttft_s=0.2, completion_tokens=5,
                   prompt_tokens=6, logprobs=[math.log(0.5)] * 5)
    r = score_item(item, g, [math.log(0.25)] * 2)
    assert r["passed"] is True
    assert r["scores"]["contains"] == 1.0 and r["scores"]["regex"] == 1.0
    assert r["scores"]["perplexity_output"] == pytest.approx(2.0)
    assert r["scores"]["perplexity_reference"] == pytest.approx(4.0)
    assert r["tokens_per_s"] == pytest.approx(4 / 0.8)
    assert set(r["heuristics"]) == {"relevance", "coherence", "safety", "factual_cues"}


def test_run_suite_on_the_local_service_builds_the_report():
    engine = FakeEngine()
    engine.queue_chunks([
        Chunk(text=" Paris", token_ids=[CHAR_BASE], logprobs=[TokenLogprob(" Paris", -0.5, [])]),
        Chunk(text=".", token_ids=[CHAR_BASE + 1], logprobs=[TokenLogprob(".", -1.5, [])],
              finish_reason="stop")])
    engine.queue_text("Rome")
    engine.queue_error(RuntimeError("engine crashed"))
    items = [EvalItem.model_validate(x) for x in (
        {"id": "fr", "prompt": "The capital of France is", "contains": "Paris"},
        {"id": "de", "messages": [{"role": "user", "content": "Capital of Germany?"}],
         "exact": "Berlin"},
        {"id": "boom", "prompt": "x", "contains": "y"})]
    done = []
    report = asyncio.run(run_suite(items, LocalTarget(build_pipeline(engine, "fake")),
                                   reference_perplexity=False, on_done=done.append))
    assert [r["id"] for r in report["items"]] == ["fr", "de", "boom"] and len(done) == 3
    fr, de, boom = report["items"]
    assert fr["passed"] is True and fr["output"] == " Paris."
    assert fr["scores"]["perplexity_output"] == pytest.approx(math.exp(1.0))
    assert de["passed"] is False and de["scores"]["exact_match"] == 0.0
    assert boom["ok"] is False and "engine crashed" in boom["error"]
    assert report["quality"]["passed"] == 1 and report["quality"]["checked"] == 3
    assert report["quality"]["scorers"]["contains"] == {"mean": 1.0, "n": 1}
    assert report["quality"]["scorers"]["exact_match"] == {"mean": 0.0, "n": 1}
    assert "heuristic" in report["quality"]["heuristics"]["note"]
    perf = report["performance"]
    assert perf["requests"] == 3 and perf["succeeded"] == 2
    assert perf["success_rate"] == pytest.approx(2 / 3)
    assert perf["latency_p50_s"] is not None and perf["completion_tokens"] == 3
    json.dumps(report)  # the report is plain JSON
