"""Scoring through the real server on the bundled model: `echo` with `logprobs` on
/v1/completions gives every prompt token's logprob from the prompt's own forward pass, for text
and token-id prompts, streamed and not, through the official client too; and a scored prompt's
logprobs agree with the ones generation reports for the same tokens."""

from __future__ import annotations

import asyncio
import json
import math

from gemmakit.engines.llamacpp import SCORE_ROWS
from gemmakit.types import GenerationRequest, SamplingParams

MODEL = "gemma-3-270m"
PROMPT = "The capital of France is"


def _complete(http, **body):
    r = http.post("/v1/completions", json={"model": MODEL, "temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_echo_scores_every_prompt_token(http):
    out = _complete(http, prompt=PROMPT, echo=True, logprobs=2, max_tokens=0)
    (c,) = out["choices"]
    lp = c["logprobs"]
    assert c["text"] == PROMPT and c["finish_reason"] == "length"
    n = out["usage"]["prompt_tokens"]
    assert out["usage"]["completion_tokens"] == 0
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == n
    assert lp["tokens"][0] == "" and lp["token_logprobs"][0] is None  # <bos>
    assert lp["top_logprobs"][0] is None
    assert "".join(lp["tokens"]) == PROMPT
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:k]) for k in range(n)]
    for tok, logprob, top in zip(lp["tokens"][1:], lp["token_logprobs"][1:],
                                 lp["top_logprobs"][1:]):
        assert -50 < logprob <= 0
        assert len(top) <= 2 and max(top.values()) >= logprob - 1e-9
        if tok in top:
            assert math.isclose(top[tok], logprob, abs_tol=1e-9)


def test_a_scored_token_has_the_logprob_generation_gives_it(http):
    gen = _complete(http, prompt=PROMPT, logprobs=1, max_tokens=1)["choices"][0]
    (token,), (logprob,) = gen["logprobs"]["tokens"], gen["logprobs"]["token_logprobs"]
    scored = _complete(http, prompt=PROMPT + token, echo=True, logprobs=1, max_tokens=0)
    lp = scored["choices"][0]["logprobs"]
    assert lp["tokens"][-1] == token
    assert math.isclose(lp["token_logprobs"][-1], logprob, abs_tol=1e-3)
    # and echo with max_tokens 1 is prompt + that same greedy token, both scored
    both = _complete(http, prompt=PROMPT, echo=True, logprobs=1, max_tokens=1)["choices"][0]
    assert both["text"] == PROMPT + token
    assert both["logprobs"]["tokens"][-1] == token
    assert math.isclose(both["logprobs"]["token_logprobs"][-1], logprob, abs_tol=1e-3)
    assert both["logprobs"]["token_logprobs"][:-1] == lp["token_logprobs"][:-1] or all(
        math.isclose(a, b, abs_tol=1e-3) for a, b in zip(both["logprobs"]["token_logprobs"][1:-1],
                                                          lp["token_logprobs"][1:-1]))


def test_token_id_prompts_and_lists_of_them(http):
    ids = http.post("/tokenize", json={"model": MODEL, "prompt": PROMPT}).json()["tokens"]
    text_scored = _complete(http, prompt=PROMPT, echo=True, logprobs=1, max_tokens=0)
    out = _complete(http, prompt=[ids, ids[:3]], echo=True, logprobs=1, max_tokens=0)
    long_c, short_c = sorted(out["choices"], key=lambda c: c["index"])
    assert long_c["text"] == PROMPT
    assert len(long_c["logprobs"]["tokens"]) == len(ids)
    assert len(short_c["logprobs"]["tokens"]) == 3
    for a, b in zip(long_c["logprobs"]["token_logprobs"][1:],
                    text_scored["choices"][0]["logprobs"]["token_logprobs"][1:]):
        assert math.isclose(a, b, abs_tol=1e-3)
    assert out["usage"]["prompt_tokens"] == len(ids) + 3


def test_streamed_echo_sends_the_scored_prompt_first(http):
    body = {"model": MODEL, "prompt": PROMPT, "echo": True, "logprobs": 1, "max_tokens": 3,
            "temperature": 0, "stream": True}
    choices = []
    with http.stream("POST", "/v1/completions", json=body) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                choices.append(json.loads(line[6:])["choices"][0])
    plain = _complete(http, prompt=PROMPT, echo=True, logprobs=1, max_tokens=3)["choices"][0]
    assert choices[0]["text"].startswith(PROMPT)
    assert "".join(c["text"] for c in choices) == plain["text"]
    tokens = [t for c in choices for t in c["logprobs"]["tokens"]]
    offsets = [o for c in choices for o in c["logprobs"]["text_offset"]]
    assert tokens == plain["logprobs"]["tokens"]
    assert offsets == plain["logprobs"]["text_offset"]
    assert choices[-1]["finish_reason"] == "length"


def test_the_official_client_reads_the_scores(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, echo=True, logprobs=1,
                                    max_tokens=0, temperature=0)
    lp = out.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.tokens is not None
    assert lp.token_logprobs[0] is None and len(lp.tokens) == out.usage.prompt_tokens


def test_a_long_prompt_is_scored_in_chunks_beside_a_running_stream(engine):
    """Over SCORE_ROWS tokens (several chunks), while another sequence decodes (chunks of the
    prefill budget, 128): every token is scored, and the scores match those of the same prompt
    scored alone."""
    ids = [2] + engine.tokenize("Bees make honey from the nectar of flowers. " * 45)
    scoring = SamplingParams(temperature=0, max_tokens=0, prompt_logprobs=1)

    async def score() -> list[float]:
        chunks = [c async for c in engine.stream(GenerationRequest(ids, scoring, "s"))]
        assert [c.finish_reason for c in chunks] == ["length"]
        assert chunks[0].prompt_logprobs is not None
        return [e.logprob for e in chunks[0].prompt_logprobs]

    async def beside() -> list[float]:
        other = GenerationRequest([2, *engine.tokenize("Once upon a time")],
                                  SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
                                  "other")
        runner = asyncio.ensure_future(_drain(engine.stream(other)))
        await asyncio.sleep(0.05)
        scores = await score()
        assert len(await runner) == 40
        return scores

    alone = asyncio.run(score())
    together = asyncio.run(beside())
    assert len(alone) == len(together) == len(ids) - 1 > SCORE_ROWS
    assert max(abs(a - b) for a, b in zip(alone, together)) < 0.5
    assert sum(abs(a - b) for a, b in zip(alone, together)) / len(alone) < 0.02


async def _drain(stream) -> list[int]:
    return [t async for c in stream for t in c.token_ids]
