"""The optional model-based judge: a ShieldGemma-style yes/no question through any engine.

The content is embedded in Google's published ShieldGemma prompt pattern (a policy expert asked
whether the text violates a stated principle; the answer must start with Yes or No), sent as one
user turn with greedy decoding and one token, and scored from the top log-probabilities:
P(violation) = P(Yes) / (P(Yes) + P(No)). The content is tokenized as text, so it cannot forge
turn markers. Run it with a ShieldGemma GGUF as the judge; any Gemma works for the plumbing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gemmakit.errors import ContextLengthExceededError, InvalidRequestError
from gemmakit.safety.config import ClassifierConfig, Direction
from gemmakit.types import Message, SamplingParams, TokenLogprob, TopLogprob

if TYPE_CHECKING:
    from gemmakit.safety.layer import InternalChat

log = logging.getLogger("gemmakit.safety.classifier")

_PROMPT = {
    "input": ("You are a policy expert trying to help determine whether a user prompt is in "
              "violation of the defined safety policies.\n\n<start_of_turn>\nHuman Question: "
              "{content}\n<end_of_turn>\n\nOur safety principle is defined in the below:\n\n"
              "* {policy}\n\n===\n\nDoes the human question violate the above principle? Your "
              "answer must start with 'Yes' or 'No'. And then walk through step by step to be "
              "sure we answer correctly."),
    "output": ("You are a policy expert trying to help determine whether an AI response to a "
               "prompt is in violation of the defined safety policies.\n\n<start_of_turn>\n"
               "Chatbot Response: {content}\n<end_of_turn>\n\nOur safety principle is defined in "
               "the below:\n\n* {policy}\n\n===\n\nDoes the Chatbot Response violate the above "
               "principle? Your answer must start with 'Yes' or 'No'. And then walk through step "
               "by step to be sure we answer correctly."),
}


@dataclass(frozen=True)
class Verdict:
    p_violation: float
    violates: bool


def _norm(token: str) -> str:
    return token.replace("\u2581", " ").strip().lower()


class Classifier:
    def __init__(self, config: ClassifierConfig) -> None:
        self.config = config

    def applies(self, direction: Direction) -> bool:
        return self.config.enabled and direction in self.config.apply_to

    async def judge(self, generate: InternalChat, content: str, direction: Direction) -> Verdict:
        """`generate` runs the judge's one-token generation as internal traffic (the pipeline's
        `internal_chat("judge", ...)`), so it is never counted as the user's request."""
        prompt = _PROMPT[direction].format(content=content, policy=self.config.policy)
        sampling = SamplingParams(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20)
        try:
            result = await generate([Message("user", prompt)], sampling)
        except ContextLengthExceededError as e:
            raise InvalidRequestError(
                f"The content is too long for the content-policy judge: with its instructions "
                f"it needs {e.prompt_tokens} tokens of a {e.context_length}-token context.",
                param="messages" if direction == "input" else None,
                code="context_length_exceeded") from None
        first = result.logprobs[0] if result.logprobs else None
        yes = no = 0.0
        if first is not None:
            alts: list[TokenLogprob | TopLogprob] = [first, *first.top]
            for alt in alts:
                word = _norm(alt.token)
                if word == "yes":
                    yes = max(yes, math.exp(alt.logprob))
                elif word == "no":
                    no = max(no, math.exp(alt.logprob))
        if yes + no == 0.0:  # neither answer among the likely tokens: read the text
            p = 1.0 if _norm(result.text).startswith("yes") else 0.0
        else:
            p = yes / (yes + no)
        return Verdict(p, p >= self.config.threshold)
