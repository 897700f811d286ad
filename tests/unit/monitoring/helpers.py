"""Reading /metrics the way a scraper does: prometheus-client's own parser."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (a counter never incremented)."""
    key = (name, tuple(sorted(labels.items())))
    return samples(text).get(key, 0.0)


def sse_usage(body: str) -> dict[str, Any]:
    """The usage object of an SSE stream's final usage chunk."""
    events = [json.loads(line[5:]) for line in body.splitlines()
              if line.startswith("data:") and line[5:].strip() != "[DONE]"]
    usage = [e["usage"] for e in events if e.get("usage")]
    assert len(usage) == 1, events
    return usage[0]
