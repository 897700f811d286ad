"""Deterministic scorers: each returns a score in [0, 1] (1 = pass for the pass/fail checks).

ROUGE-L is Google's `rouge-score` package (the reference implementation of ROUGE-1.5.5's
measure), F-measure with Porter stemming; JSON schemas are checked by `jsonschema`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any


def exact_match(output: str, expected: str) -> float:
    """1 if the output equals `expected`, ignoring surrounding whitespace."""
    return float(output.strip() == expected.strip())


def contains(output: str, needles: Sequence[str]) -> float:
    """1 if every needle occurs in the output (case-insensitive)."""
    low = output.casefold()
    return float(all(n.casefold() in low for n in needles))


def regex(output: str, pattern: str) -> float:
    """1 if the pattern matches somewhere in the output (`re.search`)."""
    return float(re.search(pattern, output) is not None)


def _json(output: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(output.strip())
    except (json.JSONDecodeError, ValueError):
        return False, None


def json_valid(output: str) -> float:
    """1 if the whole output (surrounding whitespace aside) is one JSON value."""
    return float(_json(output)[0])


def json_schema(output: str, schema: dict[str, Any]) -> float:
    """1 if the output is JSON and valid against the schema."""
    from jsonschema import validators

    ok, value = _json(output)
    if not ok:
        return 0.0
    cls = validators.validator_for(schema)
    return float(cls(schema).is_valid(value))


@lru_cache(maxsize=1)
def _rouge():
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # pragma: no cover - depends on the install
        from gemmakit.errors import ConfigError

        raise ConfigError("ROUGE-L needs rouge-score: pip install 'gemmakit[eval]'") from e
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(output: str, reference: str) -> float:
    """ROUGE-L F-measure of the output against the reference (longest common subsequence)."""
    return float(_rouge().score(reference, output)["rougeL"].fmeasure)


def perplexity(logprobs: Sequence[float]) -> float | None:
    """exp(−mean log p) over the tokens' natural-log probabilities; None without any."""
    if not logprobs:
        return None
    return math.exp(-sum(logprobs) / len(logprobs))


CHECKS = {"exact_match", "contains", "regex", "json_valid", "json_schema"}
