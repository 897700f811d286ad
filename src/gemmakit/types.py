"""Core types shared by every layer: messages, sampling, generation requests and stream chunks.

Everything here is small and engine-agnostic. Ranges are declared once, as annotated types, and
reused by the HTTP protocol models so a bad value is refused with the OpenAI parameter name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# --- parameter ranges (OpenAI's where OpenAI defines one, vLLM's otherwise) -----------------
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=-1)]  # -1 or 0: disabled
MinP = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]  # presence / frequency
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=2.0)]
MaxTokens = Annotated[int, Field(ge=1)]
ScoreTokens = Annotated[int, Field(ge=0)]
"""A completion's max_tokens: 0 (score the prompt only) is allowed with `echo`."""
NChoices = Annotated[int, Field(ge=1, le=16)]
TopLogprobs = Annotated[int, Field(ge=0, le=20)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]
StopList = Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)]


class SamplingParams(BaseModel):
    """How tokens are chosen. Validated once, at the edge (HTTP, CLI or Python API)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_tokens: ScoreTokens | None = None
    """Most tokens to generate (default: until the context is full); 0 generates nothing and
    only scores the prompt (with `prompt_logprobs`)."""
    temperature: Temperature = 1.0
    """Sampling temperature, 0 to 2; 0 is greedy."""
    top_p: TopP = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: TopK = -1
    """Keep only the k most likely tokens (-1 or 0: off)."""
    min_p: MinP = 0.0
    """Drop tokens less likely than min_p times the most likely one."""
    repetition_penalty: RepetitionPenalty = 1.0
    """Multiplicative penalty for tokens among the last 64 (1: off)."""
    presence_penalty: Penalty = 0.0
    """Additive penalty for tokens already present among the last 64, -2 to 2."""
    frequency_penalty: Penalty = 0.0
    """Additive penalty scaled by how often a token occurred among the last 64, -2 to 2."""
    seed: Seed | None = None
    """Random seed: the same seed gives the same output."""
    stop: StopList = Field(default_factory=list)
    """Stop sequence (repeatable); it is not included in the output."""
    logprobs: bool = False
    """Return the log-probability of each generated token."""
    top_logprobs: TopLogprobs = 0
    """Also return this many most likely alternatives per token."""
    prompt_logprobs: TopLogprobs | None = None
    """Also return the log-probability of every prompt token after the first, given the ones
    before it, with this many alternatives (vLLM's field; `echo` on /v1/completions). The
    prompt is then computed afresh (its cached prefix cannot give its logits)."""
    ignore_eos: bool = False
    """Keep generating past end-of-generation tokens (benchmarks; vLLM's extra field)."""
    logit_bias: dict[int, float] = Field(default_factory=dict)
    """Token id -> bias added to its logit."""
    n: NChoices = 1
    """Number of choices to generate."""


# --- messages -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextPart:
    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True)
class ImagePart:
    """A decoded, size-checked image (raw encoded bytes plus MIME type)."""

    data: bytes
    mime_type: str
    type: Literal["image"] = "image"


@dataclass(frozen=True)
class AudioPart:
    """Decoded, size-checked audio (encoded bytes plus format name)."""

    data: bytes
    format: str
    type: Literal["audio"] = "audio"


Part = TextPart | ImagePart | AudioPart
Role = Literal["system", "developer", "user", "assistant", "tool"]
"""`developer` is OpenAI's newer name for `system`; Gemma's renderer folds both the same way."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True)
class Message:
    role: Role
    content: str | list[Part] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


# --- generation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Constraint:
    """A constraint on the generated text: a JSON schema or an engine grammar."""

    kind: Literal["json_schema", "grammar"]
    value: str


@dataclass
class GenerationRequest:
    """One sequence to generate. The prompt is already tokenized: counts are exact."""

    prompt_tokens: list[int]
    sampling: SamplingParams
    request_id: str
    stop_token_ids: frozenset[int] = frozenset()
    """Tokens that end generation besides the engine's own end-of-generation tokens."""
    media: list[Part] = field(default_factory=list)
    media_features: list[object] = field(default_factory=list)
    """The engine's features for each media part, in prompt order (see `MediaEncoding`)."""
    constraint: Constraint | None = None
    adapter: str | None = None


@dataclass(frozen=True)
class MediaEncoding:
    """A media part as an engine prepared it: the prompt tokens that stand for it (its placeholder
    expanded, so usage counts include them) and features that only that engine reads."""

    token_ids: tuple[int, ...]
    features: object


FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "cancelled", "shutdown"]


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: list[int]


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top: tuple[TopLogprob, ...] = ()


@dataclass
class ChunkStats:
    """Stats that ride on the stream so monitoring never has to re-measure."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    time_to_first_token_s: float | None = None
    decode_tokens_per_s: float | None = None
    queue_time_s: float | None = None


@dataclass
class Chunk:
    """One step of a generation stream.

    `text` is always valid UTF-8 and never contains stop-sequence text; `token_ids` are the tokens
    sampled since the previous chunk (the text for some of them may still be held back).
    """

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    stats: ChunkStats | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    """With `prompt_logprobs` asked for, on the sequence's first chunk: one entry per prompt
    token after the first (the first has nothing before it to be predicted from)."""


@dataclass(frozen=True)
class Capabilities:
    text: bool = True
    vision: bool = False
    audio: bool = False
    constraints: bool = False
    grammar_tokens: bool = False
    """Its grammars may name tokens (llama.cpp's `<[id]>`): a constraint's token budget then
    counts the literal parts of a reply in real tokens rather than bytes."""
    lora: bool = False
    batching: bool = False
    embeddings: bool = False


@dataclass(frozen=True)
class EngineHealth:
    ok: bool
    detail: str = ""
    requests_running: int = 0
    requests_waiting: int = 0
    kv_cache_usage_ratio: float | None = None
