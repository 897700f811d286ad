"""The remote engine's Prometheus families, collected with the server's own metrics
(`Engine.metric_families`):

- gemmakit_upstream_requests_total{upstream,status}: attempts by outcome: the HTTP status, or
  connect_error, timeout (connect, first byte or idle), stream_error (a stream that broke or
  said an error), cancelled (the client went away);
- gemmakit_upstream_inflight{upstream}: attempts in flight now;
- gemmakit_upstream_healthy{upstream}: 1 while its breaker is closed, else 0;
- gemmakit_upstream_latency_seconds{upstream}: an attempt's duration, sent to its last byte;
- gemmakit_upstream_ejections_total{upstream}: times its circuit breaker opened.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gemmakit.engines.remote.upstreams import Upstream

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
            160.0, 320.0)


class UpstreamMetrics:
    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        from prometheus_client import Counter, Histogram

        self.upstreams = list(upstreams)
        # registry=None: collected through the engine by the server's registry
        self.requests = Counter("gemmakit_upstream_requests", "Requests sent to each upstream "
                                "(attempts, retries included) by outcome.",
                                ["upstream", "status"], registry=None)
        self.latency = Histogram("gemmakit_upstream_latency_seconds", "Duration of each "
                                 "attempt on an upstream, to its last byte.", ["upstream"],
                                 buckets=_BUCKETS, registry=None)
        for u in self.upstreams:  # series exist from start-up, at zero
            self.requests.labels(u.name, "200")
            self.latency.labels(u.name)

    def observe(self, up: Upstream, status: str, seconds: float) -> None:
        self.requests.labels(up.name, status).inc()
        self.latency.labels(up.name).observe(seconds)

    def families(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        yield from self.requests.collect()
        yield from self.latency.collect()
        inflight = GaugeMetricFamily("gemmakit_upstream_inflight",
                                     "Requests in flight on each upstream.", labels=["upstream"])
        healthy = GaugeMetricFamily("gemmakit_upstream_healthy", "1 while the upstream is "
                                    "routed to (circuit closed), else 0.", labels=["upstream"])
        ejections = CounterMetricFamily("gemmakit_upstream_ejections", "Times the upstream's "
                                        "circuit breaker opened.", labels=["upstream"])
        for u in self.upstreams:
            inflight.add_metric([u.name], u.inflight)
            healthy.add_metric([u.name], 1 if u.healthy else 0)
            ejections.add_metric([u.name], u.breaker.opens)
        yield inflight
        yield healthy
        yield ejections
