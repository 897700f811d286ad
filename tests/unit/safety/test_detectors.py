"""Built-in detectors on the labelled corpus (tests/data/pii_corpus.jsonl), and the streaming
contract: however the text is split into chunks, the output filter gives the same result as
filtering the whole text at once."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from gemmakit.safety.config import PolicyConfig
from gemmakit.safety.detectors import DETECTORS
from gemmakit.safety.pii_eval import evaluate, table
from gemmakit.safety.policy import Hits, Policy

CORPUS = Path(__file__).parents[2] / "data" / "pii_corpus.jsonl"


def test_precision_and_recall_per_detector(capsys):
    scores = evaluate(CORPUS)
    with capsys.disabled():
        print("\n" + table(scores))
    assert {s.detector for s in scores} == set(DETECTORS)
    for s in scores:
        assert s.tp >= 8, s  # the corpus has real positives for every detector
        assert s.precision >= 0.9, s
        assert s.recall >= 0.8, s


def _all_mask() -> Policy:
    return Policy(PolicyConfig(rules=[{"name": n, "detector": n, "action": "mask"}
                                      for n in DETECTORS]))


@pytest.mark.parametrize("seed", range(5))
def test_streamed_masking_equals_whole_text_masking(seed):
    policy = _all_mask()
    rng = random.Random(seed)
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["text"]
        whole = policy.apply_input(text, "x", Hits())
        f = policy.output_filter()
        out, i = [], 0
        while i < len(text):
            k = rng.randint(1, 6)
            out.append(f.feed(text[i:i + k]))
            i += k
        out.append(f.flush())
        assert "".join(out) == whole, text


def test_hold_back_is_only_what_could_still_match():
    policy = _all_mask()
    f = policy.output_filter()
    assert f.feed("The weather is nice. ") == "The weather is nice. "
    assert f.feed("Write to ana") == "Write to "  # "ana" may begin an address
    assert f.feed("@example.org") == ""  # complete, but ".org" could still grow
    assert f.feed(" soon") == "[EMAIL] "
    assert f.flush() == "soon"


def test_keywords_are_whole_words_and_case_insensitive_by_default():
    p = Policy(PolicyConfig(rules=[{"name": "kw", "keywords": ["secret plan"],
                                    "action": "mask"}]))
    assert p.apply_input("The Secret Plan is secret planning", "x", Hits()) == \
        "The [KW] is secret planning"
    strict = Policy(PolicyConfig(rules=[{"name": "kw", "keywords": ["Plan"],
                                         "case_sensitive": True, "action": "mask"}]))
    assert strict.apply_input("plan Plan", "x", Hits()) == "plan [KW]"


def test_custom_replacement_and_regex_rule():
    p = Policy(PolicyConfig(rules=[{"name": "ticket", "pattern": r"TCK-\d{4}",
                                    "action": "mask", "replacement": "<ticket>"}]))
    hits = Hits()
    assert p.apply_input("see tck-1234 and TCK-9999", "x", hits) == "see <ticket> and <ticket>"
    assert hits.as_dict() == {"ticket": {"filtered": True, "action": "mask", "count": 2}}
