"""Which upstream takes a request. Each policy chooses among the upstreams the pool offers it (the
healthy ones, or else the half-open ones), never among ejected ones.

- `LeastOutstanding`: power of two choices: two upstreams at random, the one with fewer requests
  in flight (ties: the higher weight). Near-best balance without herding on one "least" replica.
- `PrefixAffinity`: a prompt goes where its longest already-routed prefix went. The prompt is
  cut into blocks of BLOCK tokens, each block's hash chained to the ones before it; a bounded
  LRU table maps block hashes to the upstream they were sent to. A conversation's next turn
  starts with the whole previous prompt, so it finds that upstream (where its KV cache is). A
  prefix never seen goes by rendezvous hashing of its first N tokens (highest hash of key +
  upstream wins): a shared system prompt lands on one upstream, and an upstream leaving moves
  only its own keys. When the chosen upstream has more than `imbalance` requests in flight
  beyond the least loaded candidate, the request goes to the least outstanding choice instead.
- `WeightedRoundRobin`: smooth weighted round robin (nginx's): over any window the picks follow
  the weights, interleaved rather than in bursts.
"""

from __future__ import annotations

import collections
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


BLOCK = 16
"""Tokens per prefix block of --routing prefix (a prefix is matched in whole blocks)."""


class PrefixAffinity:
    def __init__(self, n_tokens: int, imbalance: int, rng: random.Random | None = None,
                 table_size: int = 200_000) -> None:
        self.n_tokens = n_tokens
        self.imbalance = imbalance
        self.fallback = LeastOutstanding(rng)
        self.table: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self.table_size = table_size
        """Block hashes remembered (8-byte keys: ~20 MB at the default)."""
        self.routed = 0
        self.owner_hits = 0
        """Requests that went to their prefix's owner (the rest: the owner was overloaded)."""

    def key(self, prompt: Sequence[int]) -> bytes:
        head = prompt[: self.n_tokens]
        return hashlib.blake2b(struct.pack(f"<{len(head)}I", *head), digest_size=8).digest()

    @staticmethod
    def blocks(prompt: Sequence[int]) -> list[bytes]:
        """Chained hashes of the prompt's whole blocks: blocks()[i] names prompt[:16 (i + 1)]."""
        out, h = [], b""
        for i in range(0, len(prompt) - BLOCK + 1, BLOCK):
            block = prompt[i:i + BLOCK]
            h = hashlib.blake2b(h + struct.pack(f"<{BLOCK}I", *block), digest_size=8).digest()
            out.append(h)
        return out

    def owner(self, candidates: Sequence[C], prompt: Sequence[int],
              blocks: Sequence[bytes] | None = None) -> C:
        """The upstream of the prompt's longest routed prefix, else its rendezvous owner."""
        by_name = {c.name: c for c in candidates}
        for h in reversed(blocks if blocks is not None else self.blocks(prompt)):
            name = self.table.get(h)
            if name is not None and name in by_name:
                return by_name[name]
        key = self.key(prompt)
        return max(candidates, key=lambda c: hashlib.blake2b(
            key + c.name.encode(), digest_size=8).digest())

    def choose(self, candidates: Sequence[C], prompt: Sequence[int]) -> C:
        self.routed += 1
        blocks = self.blocks(prompt)
        owner = self.owner(candidates, prompt, blocks)
        least = min(c.inflight for c in candidates)
        if owner.inflight - least > self.imbalance:
            chosen = self.fallback.choose(candidates, prompt)
        else:
            self.owner_hits += 1
            chosen = owner
        for h in blocks:  # the prefix is cached there now
            self.table[h] = chosen.name
            self.table.move_to_end(h)
        while len(self.table) > self.table_size:
            self.table.popitem(last=False)
        return chosen


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
