"""Which upstream takes a request. Each policy chooses among the upstreams the pool offers it (the
healthy ones, or else the half-open ones), never among ejected ones.

- `LeastOutstanding`: power of two choices: two upstreams at random, the one with fewer requests
  in flight (ties: the higher weight). Near-best balance without herding on one "least" replica.
- `PrefixAffinity`: the first N prompt tokens are hashed onto an upstream by rendezvous hashing
  (highest hash of key + upstream wins), so a conversation's turns, which share that prefix, go
  where its KV cache is; an upstream leaving moves only its own keys. When the owner has more
  than `imbalance` requests in flight beyond the least loaded candidate, the request goes to the
  least outstanding choice instead.
- `WeightedRoundRobin`: smooth weighted round robin (nginx's): over any window the picks follow
  the weights, interleaved rather than in bursts.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    name: str
    weight: float
    inflight: int


C = TypeVar("C", bound=Candidate)


class Policy(Protocol):
    def choose(self, candidates: Sequence[C], prompt: Sequence[int]) -> C: ...


class LeastOutstanding:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def choose(self, candidates: Sequence[C], prompt: Sequence[int]) -> C:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self.rng.sample(list(candidates), 2)
        return min((a, b), key=lambda c: (c.inflight, -c.weight))


class PrefixAffinity:
    def __init__(self, n_tokens: int, imbalance: int, rng: random.Random | None = None) -> None:
        self.n_tokens = n_tokens
        self.imbalance = imbalance
        self.fallback = LeastOutstanding(rng)
        self.routed = 0
        self.owner_hits = 0
        """Requests that went to their prefix's owner (the rest: the owner was overloaded)."""

    def key(self, prompt: Sequence[int]) -> bytes:
        head = prompt[: self.n_tokens]
        return hashlib.blake2b(struct.pack(f"<{len(head)}I", *head), digest_size=8).digest()

    def owner(self, candidates: Sequence[C], prompt: Sequence[int]) -> C:
        key = self.key(prompt)
        return max(candidates, key=lambda c: hashlib.blake2b(
            key + c.name.encode(), digest_size=8).digest())

    def choose(self, candidates: Sequence[C], prompt: Sequence[int]) -> C:
        self.routed += 1
        owner = self.owner(candidates, prompt)
        least = min(c.inflight for c in candidates)
        if owner.inflight - least > self.imbalance:
            return self.fallback.choose(candidates, prompt)
        self.owner_hits += 1
        return owner


class WeightedRoundRobin:
    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    def choose(self, candidates: Sequence[C], prompt: Sequence[int]) -> C:
        total = 0.0
        best: C | None = None
        for c in candidates:
            self.current[c.name] = self.current.get(c.name, 0.0) + c.weight
            total += c.weight
            if best is None or self.current[c.name] > self.current[best.name]:
                best = c
        assert best is not None
        self.current[best.name] -= total
        return best


def policy(name: str, *, prefix_tokens: int = 64, prefix_imbalance: int = 4,
           rng: random.Random | None = None) -> Policy:
    if name == "prefix":
        return PrefixAffinity(prefix_tokens, prefix_imbalance, rng)
    if name == "weighted":
        return WeightedRoundRobin()
    return LeastOutstanding(rng)
