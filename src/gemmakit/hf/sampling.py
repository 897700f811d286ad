"""Token selection for the transformers engine, in the same order and with the same meaning as the
llama.cpp engine's sampler chain: logit bias -> penalties (last 64 tokens, prompt included) ->
greedy, or top-k -> top-p -> min-p -> temperature -> a draw from a per-request seeded generator.

The top-k/top-p/min-p/temperature steps are transformers' own logits warpers."""

from __future__ import annotations

import collections
import os

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from gemmakit.types import SamplingParams

PENALTY_WINDOW = 64  # tokens, as llama.cpp's server


class Sampler:
    def __init__(self, sp: SamplingParams, prompt_tokens: list[int], n_vocab: int,
                 banned: frozenset[int] = frozenset()) -> None:
        self.sp = sp
        bias = {int(t): float(b) for t, b in sp.logit_bias.items() if 0 <= int(t) < n_vocab}
        for t in banned:  # ignore_eos: end-of-generation tokens can never be drawn
            if 0 <= t < n_vocab:
                bias[t] = float("-inf")
        self.bias: torch.Tensor | None = None
        if bias:
            self.bias = torch.zeros(n_vocab)
            self.bias[list(bias)] = torch.tensor(list(bias.values()))
        self.penalize = (sp.repetition_penalty, sp.frequency_penalty,
                         sp.presence_penalty) != (1.0, 0.0, 0.0)
        self.recent: collections.deque[int] = collections.deque(prompt_tokens[-PENALTY_WINDOW:],
                                                                maxlen=PENALTY_WINDOW)
        self.greedy = sp.temperature == 0.0
        warpers: list = []
        if not self.greedy:
            if sp.top_k > 0:
                warpers.append(TopKLogitsWarper(sp.top_k))
            if sp.top_p < 1.0:
                warpers.append(TopPLogitsWarper(sp.top_p))
            if sp.min_p > 0.0:
                warpers.append(MinPLogitsWarper(sp.min_p))
            warpers.append(TemperatureLogitsWarper(sp.temperature))
        self.warpers = LogitsProcessorList(warpers)
        seed = sp.seed if sp.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """Choose the next token from raw logits of shape (n_vocab,) (float32, CPU)."""
        scores = logits.clone()
        if self.bias is not None:
            scores += self.bias
        if self.penalize and self.recent:
            self._apply_penalties(scores)
        if self.greedy:
            token = int(torch.argmax(scores))
        else:
            scores = self.warpers(None, scores[None, :])[0]  # type: ignore[arg-type]  # unused ids
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        self.recent.append(token)
        return token

    def _apply_penalties(self, scores: torch.Tensor) -> None:
        ids, counts = torch.unique(torch.tensor(list(self.recent)), return_counts=True)
        vals = scores[ids]
        rp = self.sp.repetition_penalty
        if rp != 1.0:  # shrink the logit toward zero, whatever its sign (CTRL's penalty)
            vals = torch.where(vals > 0, vals / rp, vals * rp)
        vals = vals - counts.to(vals.dtype) * self.sp.frequency_penalty - self.sp.presence_penalty
        scores[ids] = vals
