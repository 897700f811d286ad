"""The `[monitoring]` settings section (a nested model of `Settings`): readiness probe, alert rules
and their webhook. Kept free of heavy imports: `gemmakit.settings` imports it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

AlertMetric = Literal["ttft_p95_seconds", "e2e_p95_seconds", "tokens_per_second_avg",
                      "success_rate", "memory_rss_bytes", "queue_depth"]


class AlertRule(BaseModel):
    """One threshold rule, evaluated continuously over a sliding window."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field(min_length=1)
    """Alert name (shown in the log, the webhook payload, /v1/alerts and the dashboard)."""
    metric: AlertMetric
    """What to watch (see docs/monitoring.md for each metric's definition)."""
    above: float | None = None
    """Fire while the metric is above this value."""
    below: float | None = None
    """Fire while the metric is below this value."""
    window_seconds: float = Field(default=60.0, gt=0)
    """Sliding window the metric is computed over (gauges such as memory use their value now)."""

    @model_validator(mode="after")
    def _one_threshold(self) -> AlertRule:
        if (self.above is None) == (self.below is None):
            raise ValueError(f"alert '{self.name}' needs exactly one of 'above' or 'below'")
        return self


def default_alerts() -> list[AlertRule]:
    """The default alert rules: slow responses, high memory, slow decoding, failing requests."""
    return [
        AlertRule(name="slow-responses", metric="e2e_p95_seconds", above=10.0,
                  window_seconds=300),
        AlertRule(name="high-memory", metric="memory_rss_bytes", above=8 * 1024**3,
                  window_seconds=60),
        AlertRule(name="low-throughput", metric="tokens_per_second_avg", below=5.0,
                  window_seconds=300),
        AlertRule(name="low-success-rate", metric="success_rate", below=0.95,
                  window_seconds=300),
    ]


class MonitoringSettings(BaseModel):
    """TOML section `[monitoring]`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    webhook: HttpUrl | None = None
    """URL alerts are POSTed to as JSON (optional; alerts always go to the log)."""
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    """Timeout of one webhook delivery attempt."""
    webhook_retries: int = Field(default=3, ge=0, le=20)
    """Further attempts after a failed delivery (exponential back-off from 0.5 s)."""
    evaluate_every_seconds: float = Field(default=5.0, gt=0)
    """How often alert rules are evaluated."""
    alerts: list[AlertRule] = Field(default_factory=default_alerts)
    """Alert rules (`[[monitoring.alerts]]`); giving any replaces the defaults, `alerts = []`
    turns them off."""
    ready_threshold_seconds: float = Field(default=2.0, gt=0)
    """/ready: a probe answered slower than this makes the server 'degraded'."""
    ready_timeout_seconds: float = Field(default=30.0, gt=0)
    """/ready: a probe not answered within this makes the server 'unhealthy'."""
    ready_cache_seconds: float = Field(default=10.0, ge=0)
    """/ready: a probe result is reused this long, so probes cannot load the server."""
    window_max_seconds: float = Field(default=3600.0, gt=0)
    """Longest history of requests kept in memory for alerts and the dashboard."""
