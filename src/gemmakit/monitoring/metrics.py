"""Prometheus metrics (prometheus-client), one registry per app.

Names follow vLLM's where vLLM has one (`*_time_to_first_token_seconds`, `*_e2e_request_latency_
seconds`, …) so existing dashboards and alert rules carry over. Token counters are incremented
from the same numbers the responses' `usage` reports; engine gauges are read from
`engine.health()` at scrape time, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gemmakit.types import ChunkStats, EngineHealth

# Seconds; dense below a second, where a 270M model on a CPU lives, sparse up to minutes.
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                    1.5, 2.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
                 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768,
                  65536, 131072)


class EngineGauges(Collector):
    """Scheduler and cache gauges, read from each served model's engine when scraped (None:
    not loaded), and how many models are loaded."""

    def __init__(self, healths: Callable[[], Mapping[str, EngineHealth | None]]) -> None:
        self.healths = healths

    def collect(self) -> Iterator[Metric]:
        healths = self.healths()
        running = GaugeMetricFamily("gemmakit_requests_running",
                                    "Sequences being generated now.", labels=["model"])
        waiting = GaugeMetricFamily("gemmakit_requests_waiting",
                                    "Sequences queued for the engine.", labels=["model"])
        kv = GaugeMetricFamily("gemmakit_kv_cache_usage_ratio",
                               "Share of the KV cache in use (0..1), where the engine knows it.",
                               labels=["model"])
        loaded = GaugeMetricFamily("gemmakit_models_loaded",
                                   "Served models loaded now (--max-loaded-models bounds it).")
        for model, h in healths.items():
            running.add_metric([model], h.requests_running if h else 0)
            waiting.add_metric([model], h.requests_waiting if h else 0)
            if h is not None and h.kv_cache_usage_ratio is not None:
                kv.add_metric([model], h.kv_cache_usage_ratio)
        loaded.add_metric([], sum(1 for h in healths.values() if h is not None))
        yield running
        yield waiting
        yield kv
        yield loaded


class EngineFamilies(Collector):
    """The engines' own metric families (`Engine.metric_families`: the remote engine's
    upstream series), read from the loaded engines when scraped; families of the same name from
    several engines are merged."""

    def __init__(self, engines: Callable[[], Sequence[Any]]) -> None:
        self.engines = engines

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for engine in self.engines():
            for family in engine.metric_families():
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        yield from merged.values()


class Metrics:
    """The metric families of the served models (label `model`; the first is the default).
    `healths()` maps each served model to its engine's health, None while it is not loaded."""

    def __init__(self, models: str | Sequence[str],
                 healths: Callable[[], Mapping[str, EngineHealth | None]],
                 engines: Callable[[], Sequence[Any]] | None = None) -> None:
        names = [models] if isinstance(models, str) else list(models)
        self.model = names[0]
        self.registry = CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes, process_cpu_seconds_total, … (Linux /proc)
        ProcessCollector(registry=r)
        r.register(EngineGauges(healths))
        if engines is not None:
            r.register(EngineFamilies(engines))
        m = ["model"]
        self.ttft = Histogram("gemmakit_time_to_first_token_seconds",
                              "Time from submission to the first generated token, per sequence.",
                              m, buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("gemmakit_time_per_output_token_seconds",
                              "Mean time per generated token after the first, per sequence.",
                              m, buckets=_TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("gemmakit_e2e_request_latency_seconds",
                             "Time from receiving a generation request to its last byte sent.",
                             ["model", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("gemmakit_request_queue_time_seconds",
                               "Time a sequence waited before the engine admitted it.",
                               m, buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_hist = Histogram("gemmakit_request_prompt_tokens",
                                     "Prompt tokens per request (as in its usage).",
                                     m, buckets=_TOKEN_BUCKETS, registry=r)
        self.gen_hist = Histogram("gemmakit_request_generation_tokens",
                                  "Generated tokens per request, all choices (as in its usage).",
                                  m, buckets=_TOKEN_BUCKETS, registry=r)
        self.prompt_total = Counter("gemmakit_prompt_tokens",
                                    "Prompt tokens processed (sum of the responses' usage).",
                                    m, registry=r)
        self.gen_total = Counter("gemmakit_generation_tokens",
                                 "Tokens generated (sum of the responses' usage).", m, registry=r)
        self.requests = Counter("gemmakit_requests",
                                "Generation requests by HTTP status (refused and failed included).",
                                ["model", "status"], registry=r)
        self.schema_failures = Counter(
            "gemmakit_schema_check_failures",
            "Choices that failed the check after generation: kind=answer, a response_format "
            "answer that does not validate against its schema (under a keyword the grammar "
            "leaves to the check); kind=call, calls that were returned as text.",
            ["model", "kind"], registry=r)
        kinds = ["model", "kind"]
        self.internal_requests = Counter(
            "gemmakit_internal_requests",
            "Internal generations (kind: judge, readiness), never counted as user requests.",
            ["model", "kind", "status"], registry=r)
        self.internal_prompt = Counter("gemmakit_internal_prompt_tokens",
                                       "Prompt tokens of internal generations.", kinds, registry=r)
        self.internal_gen = Counter("gemmakit_internal_generation_tokens",
                                    "Tokens generated by internal generations.", kinds, registry=r)
        # Every series of each served model exists from start-up, at zero: rate() and alerts
        # see a fresh server instead of nothing.
        for model in names:
            for family in (self.ttft, self.tpot, self.queue, self.prompt_hist, self.gen_hist,
                           self.prompt_total, self.gen_total):
                family.labels(model)
            for family in (self.e2e, self.requests):
                family.labels(model, "200")
            for kind in ("answer", "call"):
                self.schema_failures.labels(model, kind)
            for kind in ("judge", "readiness"):
                self.internal_prompt.labels(model, kind)
                self.internal_gen.labels(model, kind)

    def observe_sequence(self, stats: ChunkStats, model: str | None = None) -> None:
        """One finished sequence (choice), from the stats on its final chunk."""
        m = model or self.model
        if stats.time_to_first_token_s is not None:
            self.ttft.labels(m).observe(stats.time_to_first_token_s)
        if stats.decode_tokens_per_s and stats.completion_tokens > 1:
            self.tpot.labels(m).observe(1.0 / stats.decode_tokens_per_s)
        if stats.queue_time_s is not None:
            self.queue.labels(m).observe(stats.queue_time_s)

    def observe_request(self, status: int, e2e_s: float, prompt_tokens: int,
                        generation_tokens: int, reached_engine: bool,
                        model: str | None = None) -> None:
        m = model or self.model
        self.requests.labels(m, str(status)).inc()
        self.e2e.labels(m, str(status)).observe(e2e_s)
        if reached_engine:
            self.prompt_total.labels(m).inc(prompt_tokens)
            self.gen_total.labels(m).inc(generation_tokens)
            self.prompt_hist.labels(m).observe(prompt_tokens)
            self.gen_hist.labels(m).observe(generation_tokens)

    def observe_schema_failure(self, kind: str, model: str | None = None) -> None:
        self.schema_failures.labels(model or self.model, kind).inc()

    def observe_internal(self, kind: str, status: int, prompt_tokens: int,
                         generation_tokens: int, model: str | None = None) -> None:
        m = model or self.model
        self.internal_requests.labels(m, kind, str(status)).inc()
        self.internal_prompt.labels(m, kind).inc(prompt_tokens)
        self.internal_gen.labels(m, kind).inc(generation_tokens)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The text exposition format (or OpenMetrics, if the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
