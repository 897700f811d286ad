"""Precision and recall of the built-in detectors on a labelled corpus:
`python -m gemmakit.safety.pii_eval CORPUS.jsonl` prints one row per detector.

A corpus line is `{"text": "...", "spans": {"email": ["exact substring", ...], ...}}`; a finding
counts as a true positive only when its text equals a labelled span of the same detector.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gemmakit.safety.config import PolicyConfig, PolicyRule
from gemmakit.safety.detectors import DETECTORS
from gemmakit.safety.policy import Policy


@dataclass(frozen=True)
class Score:
    detector: str
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def find(policy: Policy, text: str) -> list[str]:
    findings, _ = policy._scan(text, 0, policy.rules, final=True)
    return [text[f.start:f.end] for f, _ in findings]


def evaluate(corpus: Path, region: str = "US") -> list[Score]:
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    scores = []
    for name in DETECTORS:
        policy = Policy(PolicyConfig(rules=[PolicyRule(name=name, detector=name, action="flag")],
                                     phone_region=region))
        tp = fp = fn = 0
        for row in rows:
            want = Counter(row["spans"].get(name, []))
            got = Counter(find(policy, row["text"]))
            hit = sum((want & got).values())
            tp += hit
            fp += sum(got.values()) - hit
            fn += sum(want.values()) - hit
        scores.append(Score(name, tp, fp, fn))
    return scores


def table(scores: list[Score]) -> str:
    lines = [f"{'detector':<14}{'TP':>5}{'FP':>5}{'FN':>5}{'precision':>11}{'recall':>9}"]
    for s in scores:
        lines.append(f"{s.detector:<14}{s.tp:>5}{s.fp:>5}{s.fn:>5}{s.precision:>11.3f}"
                     f"{s.recall:>9.3f}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(table(evaluate(Path(sys.argv[1]))))
