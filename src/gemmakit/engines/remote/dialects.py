"""What a `GenerationRequest` becomes on each kind of upstream's `/v1/completions`, and what a
streamed event of theirs says.

All kinds get the OpenAI fields (token-id prompt, max_tokens, temperature, top_p, seed, stop,
penalties, logit_bias, logprobs, stream with usage). Beyond them:

| field                 | gemmakit               | vLLM                          | llama-server        |
|-----------------------|------------------------|-------------------------------|---------------------|
| top_k, min_p          | top_k, min_p           | top_k, min_p                  | top_k, min_p        |
| repetition penalty    | repetition_penalty     | repetition_penalty            | repeat_penalty      |
| ignore_eos            | ignore_eos             | ignore_eos                    | ignore_eos          |
| stop token ids        | (its own EOG tokens)   | stop_token_ids                | (its EOG tokens)    |
| token ids of a chunk  | return_token_ids       | return_token_ids              | verbose (see below) |
| GBNF grammar          | grammar                | structured_outputs.grammar    | grammar             |
| JSON schema           | grammar (compiled here)| structured_outputs.json       | json_schema         |

The gateway stops at its own stop tokens and strings whatever the upstream does (see
`engines/remote/__init__.py`), so the upstreams' own stop handling only saves work.

llama-server's `/v1/completions` stream carries no token ids of its own: each streamed event holds
one token, whose id comes in the event's `__verbose` object when the request says `verbose`, and
in its logprobs (`logprobs.content[].id`, its chat-style logprobs) when logprobs are asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gemmakit.types import Constraint, GenerationRequest


def request_body(kind: str, model: str, request: GenerationRequest, max_tokens: int
                 ) -> dict[str, Any]:
    sp = request.sampling
    body: dict[str, Any] = {
        "model": model, "prompt": list(request.prompt_tokens), "max_tokens": max_tokens,
        "temperature": sp.temperature, "top_p": sp.top_p, "n": 1, "stream": True,
        "stream_options": {"include_usage": True},
    }
    if sp.seed is not None:
        body["seed"] = sp.seed
    if sp.stop:
        body["stop"] = list(sp.stop)
    if sp.presence_penalty:
        body["presence_penalty"] = sp.presence_penalty
    if sp.frequency_penalty:
        body["frequency_penalty"] = sp.frequency_penalty
    if sp.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in sp.logit_bias.items()}
    if sp.logprobs:
        body["logprobs"] = sp.top_logprobs
    if kind == "openai":
        return body
    if sp.top_k > 0:
        body["top_k"] = sp.top_k
    if sp.min_p:
        body["min_p"] = sp.min_p
    if sp.ignore_eos:
        body["ignore_eos"] = True
    if sp.repetition_penalty != 1.0:
        body["repeat_penalty" if kind == "llama-server" else "repetition_penalty"] = \
            sp.repetition_penalty
    if kind == "llama-server":
        body["verbose"] = True  # each event's token id, in __verbose.tokens
    else:
        body["return_token_ids"] = True
    if kind == "vllm" and request.stop_token_ids:
        body["stop_token_ids"] = sorted(request.stop_token_ids)
    if request.constraint is not None:
        body.update(constraint_fields(kind, request.constraint))
    return body


def constraint_fields(kind: str, c: Constraint) -> dict[str, Any]:
    if kind == "vllm":
        return {"structured_outputs": {"grammar": c.value} if c.kind == "grammar"
                else {"json": json.loads(c.value)}}
    if kind == "llama-server":
        return {"grammar": c.value} if c.kind == "grammar" \
            else {"json_schema": json.loads(c.value)}
    if c.kind == "json_schema":  # a gemmakit upstream takes grammars: compile the schema here
        from gemmakit.tools.constraints import schema_to_gbnf

        return {"grammar": schema_to_gbnf(json.loads(c.value))}
    return {"grammar": c.value}


@dataclass
class Event:
    """One streamed completion event, as the upstream sent it."""

    text: str = ""
    token_ids: list[int] | None = None
    """The tokens it generated since the previous event, when the upstream says."""
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


def parse_event(obj: Any) -> Event:
    """A `data:` line's JSON (OpenAI's text_completion chunk, or an error object)."""
    if not isinstance(obj, dict):
        return Event(error={"message": "an event that is not a JSON object"})
    if obj.get("error") is not None:
        err = obj["error"]
        return Event(error=err if isinstance(err, dict) else {"message": str(err)})
    ev = Event(usage=obj.get("usage") if isinstance(obj.get("usage"), dict) else None)
    choices = obj.get("choices") or []
    if choices and isinstance(choices[0], dict):
        ch = choices[0]
        ev.text = ch.get("text") or ""
        ev.finish_reason = ch.get("finish_reason")
        ids = ch.get("token_ids")
        verbose = obj.get("__verbose")
        if ids is None and isinstance(verbose, dict):
            ids = verbose.get("tokens")  # llama-server, asked with verbose
        lp = ch.get("logprobs")
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            content = [e for e in lp["content"] if isinstance(e, dict)]  # llama-server's shape
            ev.tokens = [str(e.get("token", "")) for e in content]
            ev.token_logprobs = [e.get("logprob") for e in content]
            ev.top_logprobs = [{str(t.get("token", "")): float(t["logprob"])
                                for t in e.get("top_logprobs") or []
                                if isinstance(t, dict) and isinstance(t.get("logprob"),
                                                                      (int, float))}
                               for e in content]
            if ids is None:
                ids = [e.get("id") for e in content]
        elif isinstance(lp, dict):
            ev.tokens = list(lp.get("tokens") or [])
            ev.token_logprobs = list(lp.get("token_logprobs") or [])
            ev.top_logprobs = list(lp.get("top_logprobs") or [])
        if isinstance(ids, list) and all(isinstance(t, int) for t in ids):
            ev.token_ids = ids
    return ev
