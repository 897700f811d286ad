"""Per-key rate limits: requests per minute (RPM) and tokens per minute (TPM) over an exact sliding
window of 60 s (a log of timestamped entries, not fixed buckets), so no burst at a window edge can
admit more than the limit.

A request takes one RPM slot when it arrives; a generation request then *reserves* its worst-case
tokens (prompt + max_tokens per choice) before it runs and corrects the reservation to the real
count when it finishes, so concurrent bursts cannot overshoot TPM.

Stores are plugins named by the `--ratelimit-store` URL scheme: `memory` (this process; the
default) and `redis://…` (shared by every replica pointed at the same Redis).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from gemmakit.errors import ConfigError, GemmakitError

WINDOW_S = 60.0

STORES: dict[str, str] = {
    "memory": "gemmakit.safety.ratelimit.memory:MemoryStore",
    "redis": "gemmakit.safety.ratelimit.redis:RedisStore",
    "rediss": "gemmakit.safety.ratelimit.redis:RedisStore",
}


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None


@dataclass(frozen=True)
class Decision:
    """The outcome of an acquire and the window's state after it (for the x-ratelimit-* headers).
    Times are seconds from now."""

    allowed: bool
    remaining_requests: int | None = None
    reset_requests_s: float = 0.0
    remaining_tokens: int | None = None
    reset_tokens_s: float = 0.0
    retry_after_s: float = 0.0
    too_large: bool = False
    """The tokens asked for exceed the TPM limit itself: waiting will not help."""


class RateLimitStore(Protocol):
    async def acquire(self, key: str, limits: Limits, *, entry: str, requests: int = 0,
                      tokens: int = 0) -> Decision:
        """Atomically check and record `requests` request slots and `tokens` tokens under the
        id `entry` (nothing is recorded when the answer is no)."""
        ...

    async def adjust(self, key: str, entry: str, tokens: int) -> None:
        """Set the tokens recorded under `entry` (a reservation corrected to the real count)."""
        ...

    async def aclose(self) -> None: ...


class RateLimitError(GemmakitError):
    status = 429
    type = "requests"  # OpenAI's error type names the exhausted limit: requests or tokens
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float | None,
                 kind: str = "requests") -> None:
        super().__init__(message)
        self.type = kind
        self.headers = ({"Retry-After": str(max(1, round(retry_after_s + 0.499)))}
                        if retry_after_s is not None else {})


def open_store(url: str) -> RateLimitStore:
    scheme = url.split("://", 1)[0] if "://" in url else url
    target = STORES.get(scheme)
    if target is None:
        raise ConfigError(f"unknown rate-limit store '{url}' (use memory or redis://host:port/db)")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)(url)


def format_reset(seconds: float) -> str:
    """OpenAI's duration style for x-ratelimit-reset-*: `850ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s}s"


def headers_for(limits: Limits, d: Decision) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for kind, limit, remaining, reset in (
            ("requests", limits.rpm, d.remaining_requests, d.reset_requests_s),
            ("tokens", limits.tpm, d.remaining_tokens, d.reset_tokens_s)):
        if limit is None:
            continue
        out += [(f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
                (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, remaining or 0)).encode()),
                (f"x-ratelimit-reset-{kind}".encode(), format_reset(reset).encode())]
    return out
