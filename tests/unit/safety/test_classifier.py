"""The classifier hook through the app with scripted judge answers (the fake engine returns the
log-probabilities a ShieldGemma-style judge would): block and flag on input, block on output."""

from __future__ import annotations

import json
import math

import pytest

from gemmakit.types import Chunk, ChunkStats, TokenLogprob, TopLogprob

MODEL = "gemma-test"
CHAT = "/v1/chat/completions"


def verdict(p_yes: float) -> list[Chunk]:
    """The judge's one-token answer: 'Yes' with probability p_yes, 'No' otherwise."""
    yes, no = math.log(p_yes), math.log(1 - p_yes)
    first, second = (("Yes", yes), ("No", no)) if p_yes >= 0.5 else (("No", no), ("Yes", yes))
    lp = TokenLogprob(first[0], first[1], list(first[0].encode()),
                      top=(TopLogprob(first[0], first[1], []), TopLogprob(second[0], second[1],
                                                                           [])))
    return [Chunk(text=first[0], token_ids=[1001], logprobs=[lp]),
            Chunk(finish_reason="length", stats=ChunkStats(completion_tokens=1))]


@pytest.fixture
def fake_engine(fake_engine_class):
    return fake_engine_class(context_length=4096)  # room for the judge's instructions


def judge_policy(**kw):
    return {"classifier": {"enabled": True, **kw}}


def test_input_judged_unsafe_is_blocked(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, policy=judge_policy())
    fake_engine.queue_chunks(verdict(0.9))
    r = c.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "content_policy_violation"
    assert r.json()["error"]["param"] == "messages"
    judge = fake_engine.detokenize(fake_engine.requests[0].prompt_tokens)
    assert "Human Question: x" in judge and "Yes' or 'No'" in judge
    assert fake_engine.requests[0].sampling.max_tokens == 1
    assert len(fake_engine.requests) == 1  # the request itself never ran


def test_input_judged_safe_runs(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, policy=judge_policy(threshold=0.5))
    fake_engine.queue_chunks(verdict(0.2))
    fake_engine.queue_text("fine")
    r = c.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "fine"
    assert "prompt_filter_results" not in r.json()


def test_flag_action_reports_and_runs(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, policy=judge_policy(action="flag"))
    fake_engine.queue_chunks(verdict(0.95))
    fake_engine.queue_text("answer")
    r = c.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    results = r.json()["prompt_filter_results"][0]["content_filter_results"]
    assert results["classifier"] == {"filtered": False, "action": "flag", "count": 1}


def test_output_judged_unsafe_ends_with_content_filter(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL, policy=judge_policy(apply_to=["output"]))
    fake_engine.queue_text("some ", "bad ", "answer")
    fake_engine.queue_chunks(verdict(0.8))
    r = c.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                           "stream": True})
    text = r.text
    assert '"finish_reason":"content_filter"' in text
    events = [json.loads(line[6:]) for line in text.splitlines()
              if line.startswith("data: {")]
    sent = "".join(ch["delta"].get("content") or "" for e in events for ch in e["choices"])
    assert sent == ""  # held until judged, then withheld (the ids' hex may spell "bad")
    judge = fake_engine.detokenize(fake_engine.requests[1].prompt_tokens)
    assert "Chatbot Response: some bad answer" in judge


def test_content_too_long_for_the_judge_is_a_clear_400(make_client, fake_engine_class):
    engine = fake_engine_class(context_length=700)
    c = make_client(engine, model_name=MODEL, policy=judge_policy())
    r = c.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "y" * 300}],
                           "max_tokens": 1})
    assert r.status_code == 400
    assert "judge" in r.json()["error"]["message"]
    assert engine.requests == []
