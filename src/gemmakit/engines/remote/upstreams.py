"""The upstreams of the remote engine: each one's address, key, kind, circuit breaker and load,
and the pool that hands a request to one of them (through a routing policy, never to an ejected
upstream while another is healthy)."""

from __future__ import annotations

import logging
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from gemmakit.engines.remote.breaker import CircuitBreaker
from gemmakit.engines.remote.routing import Policy
from gemmakit.errors import ServiceUnavailableError, UnsupportedError

log = logging.getLogger("gemmakit.engine.remote")

Kind = Literal["gemmakit", "vllm", "llama-server", "openai"]
"""What serves an upstream; "openai": an OpenAI-compatible server of unknown make (standard
fields only, so no constrained decoding)."""
CONSTRAINED_KINDS = frozenset({"gemmakit", "vllm", "llama-server"})
OWNERS: dict[str, Kind] = {"gemmakit": "gemmakit", "vllm": "vllm", "llamacpp": "llama-server"}
"""/v1/models `owned_by` -> kind."""


def base_url(url: str) -> str:
    """The server's root: trailing '/' and '/v1' removed (both spellings are accepted)."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


@dataclass(eq=False)
class Upstream:
    url: str
    key: str | None = None
    weight: float = 1.0
    configured_kind: str = "auto"
    model: str | None = None
    name: str = ""
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    kind: Kind | None = None
    """Detected (or configured) once the upstream has answered."""
    context_length: int | None = None
    inflight: int = 0
    last_error: str | None = None
    checked: bool = False
    """An active health check has answered at least once."""

    def __post_init__(self) -> None:
        self.url = base_url(self.url)
        if not self.name:
            parts = urlsplit(self.url)
            self.name = parts.netloc + (parts.path if parts.path not in ("", "/") else "")
        if self.configured_kind != "auto":
            self.kind = self.configured_kind  # type: ignore[assignment]

    @property
    def known(self) -> bool:
        """Its kind and model are known: it can be sent requests."""
        return self.kind is not None and self.model is not None

    @property
    def healthy(self) -> bool:
        return self.known and self.breaker.state == "closed"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def learn(self, models: Any, props_ok: bool = False) -> None:
        """Kind, model and context from its /v1/models answer (and whether /props answered)."""
        data = models.get("data") if isinstance(models, dict) else None
        cards = [c for c in data if isinstance(c, dict)] if isinstance(data, list) else []
        card = next((c for c in cards if c.get("id") == self.model), cards[0] if cards else None)
        if self.kind is None:
            owner = str(card.get("owned_by", "")) if card else ""
            self.kind = OWNERS.get(owner, "llama-server" if props_ok else "openai")
        if card is not None:
            if self.model is None:
                self.model = str(card.get("id"))
            ctx = card.get("context_length") or card.get("max_model_len")
            if isinstance(ctx, int) and ctx > 0:
                self.context_length = ctx

    def status(self) -> dict[str, Any]:
        """Its state for /health."""
        b = self.breaker
        return {"name": self.name, "url": self.url, "kind": self.kind, "model": self.model,
                "healthy": self.healthy, "state": b.state if self.known else "unknown",
                "inflight": self.inflight, "consecutive_failures": b.consecutive,
                "ejections": b.opens, "retry_in_s": round(b.retry_in(), 3),
                "weight": self.weight, "last_error": self.last_error}


class Pool:
    """The upstreams and the routing policy."""

    def __init__(self, upstreams: Sequence[Upstream], policy: Policy) -> None:
        if not upstreams:
            raise ValueError("no upstreams")
        self.upstreams = list(upstreams)
        self.policy = policy

    def check(self, *, constrained: bool = False) -> None:
        """Raise now what `choose` would raise for a first attempt (no upstream may be tried:
        503; none can constrain: 400), acquiring nothing: the engine's admission, before a
        response has started."""
        ups, _ = self._candidates(frozenset(), constrained)
        if not ups:
            raise self._none_available()

    def _candidates(self, exclude: Set[Upstream], constrained: bool
                    ) -> tuple[list[Upstream], bool]:
        """(the upstreams that may take an attempt, whether they are the healthy ones)."""
        ups = [u for u in self.upstreams if u.known and u not in exclude]
        if constrained:
            ups = [u for u in ups if u.kind in CONSTRAINED_KINDS]
            if not ups and not exclude and any(u.known for u in self.upstreams):
                raise UnsupportedError("no upstream of this gateway can constrain generation "
                                       "(OpenAI-compatible servers of unknown kind cannot).")
        healthy = [u for u in ups if u.breaker.state == "closed"]
        if healthy:
            return healthy, True
        return [u for u in ups if u.breaker.allows()], False

    def _none_available(self) -> ServiceUnavailableError:
        waits = [u.breaker.retry_in() for u in self.upstreams if u.known]
        retry = max(1, round(min(waits))) if waits else 5
        return ServiceUnavailableError(
            "No upstream can take the request now (all are ejected or were tried).",
            headers={"Retry-After": str(retry)})

    def choose(self, prompt: Sequence[int], *, exclude: Set[Upstream] = frozenset(),
               constrained: bool = False) -> Upstream:
        """An upstream for the next attempt, its breaker acquired. The healthy (closed) ones
        first; only when none is healthy, a half-open one for its single trial. Raises 503
        (with Retry-After: until the first cooldown ends) when none may be tried."""
        ups, healthy = self._candidates(exclude, constrained)
        if healthy:
            up = self.policy.choose(ups, prompt)
        else:
            if not ups:
                raise self._none_available()
            up = ups[0] if len(ups) == 1 else self.policy.choose(ups, prompt)
        up.breaker.acquire()
        return up

    @property
    def context_length(self) -> int | None:
        known = [u.context_length for u in self.upstreams if u.context_length]
        return min(known) if known else None
