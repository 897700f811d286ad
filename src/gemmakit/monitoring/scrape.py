"""Reading a running server's `/metrics` (for `gemmakit top`): parse the text exposition with
prometheus-client's own parser, then turn two scrapes into rates and interval percentiles, the way
PromQL's `rate()` and `histogram_quantile()` do."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Scrape:
    t: float
    counters: dict[str, float] = field(default_factory=dict)  # name -> value, summed over labels
    by_status: dict[str, float] = field(default_factory=dict)  # requests_total per status
    gauges: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # le -> cumulative count


_HISTOGRAMS = ("gemmakit_time_to_first_token_seconds", "gemmakit_time_per_output_token_seconds",
               "gemmakit_e2e_request_latency_seconds", "gemmakit_request_queue_time_seconds")


def parse(text: str, t: float) -> Scrape:
    s = Scrape(t)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "gemmakit_requests_total":
                s.by_status[labels["status"]] = s.by_status.get(labels["status"], 0) + value
            if family.type == "counter" and name.endswith("_total"):
                s.counters[name] = s.counters.get(name, 0.0) + value
            elif family.type == "gauge":
                s.gauges[name] = s.gauges.get(name, 0.0) + value
            elif family.type == "histogram" and name.endswith("_bucket") \
                    and family.name in _HISTOGRAMS:
                b = s.buckets.setdefault(family.name, {})
                le = float(labels["le"])
                b[le] = b.get(le, 0.0) + value  # summed over the other labels (status)
    return s


def histogram_quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """PromQL's estimate: find the bucket holding the q-th observation, interpolate linearly."""
    items = sorted(cumulative.items())
    if not items or items[-1][1] <= 0:
        return None
    total = items[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # beyond the last finite bucket: its upper bound is all we know
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def _delta(cur: dict[float, float], prev: dict[float, float] | None) -> dict[float, float]:
    if prev is None:
        return cur
    d = {le: c - prev.get(le, 0.0) for le, c in cur.items()}
    return d if all(v >= 0 for v in d.values()) else cur  # a restart reset the counters


@dataclass(frozen=True)
class Figures:
    interval_s: float
    request_rate: float
    success_rate: float | None
    statuses: dict[str, float]  # requests per status in the interval
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    ttft_p50: float | None
    ttft_p95: float | None
    e2e_p50: float | None
    e2e_p95: float | None
    tpot_p50: float | None
    queue_p95: float | None
    running: float
    waiting: float
    kv_cache_usage_ratio: float | None
    memory_rss_bytes: float | None
    requests_total: float
    generation_tokens_total: float


def figures(cur: Scrape, prev: Scrape | None) -> Figures:
    """Rates over the interval since `prev` (since the server started when there is none)."""
    dt = max(cur.t - prev.t, 1e-9) if prev is not None else None

    def rate(name: str) -> float:
        now = cur.counters.get(name, 0.0)
        if prev is None or dt is None:
            return 0.0
        return max(0.0, now - prev.counters.get(name, 0.0)) / dt

    statuses = {k: v - (prev.by_status.get(k, 0.0) if prev else 0.0)
                for k, v in cur.by_status.items()}
    statuses = {k: v for k, v in statuses.items() if v > 0}
    judged = {k: v for k, v in statuses.items() if not (k.startswith("4") and k != "429")}
    n_judged = sum(judged.values())
    ok = sum(v for k, v in judged.items() if k.startswith("2"))

    def q(name: str, quantile: float) -> float | None:
        cur_b = cur.buckets.get(name)
        if not cur_b:
            return None
        return histogram_quantile(quantile, _delta(cur_b, prev.buckets.get(name) if prev else None))

    g = cur.gauges
    return Figures(
        interval_s=dt or 0.0,
        request_rate=rate("gemmakit_requests_total"),
        success_rate=ok / n_judged if n_judged else None,
        statuses=statuses,
        prompt_tokens_per_s=rate("gemmakit_prompt_tokens_total"),
        generation_tokens_per_s=rate("gemmakit_generation_tokens_total"),
        ttft_p50=q("gemmakit_time_to_first_token_seconds", 0.5),
        ttft_p95=q("gemmakit_time_to_first_token_seconds", 0.95),
        e2e_p50=q("gemmakit_e2e_request_latency_seconds", 0.5),
        e2e_p95=q("gemmakit_e2e_request_latency_seconds", 0.95),
        tpot_p50=q("gemmakit_time_per_output_token_seconds", 0.5),
        queue_p95=q("gemmakit_request_queue_time_seconds", 0.95),
        running=g.get("gemmakit_requests_running", 0.0),
        waiting=g.get("gemmakit_requests_waiting", 0.0),
        kv_cache_usage_ratio=g.get("gemmakit_kv_cache_usage_ratio"),
        memory_rss_bytes=g.get("process_resident_memory_bytes"),
        requests_total=cur.counters.get("gemmakit_requests_total", 0.0),
        generation_tokens_total=cur.counters.get("gemmakit_generation_tokens_total", 0.0),
    )
