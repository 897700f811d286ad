"""Prompt-lookup decoding (`--prompt-lookup K`) on the llama.cpp engine and the bundled model:
drafts are accepted on a reply that copies its prompt, the budget and stop strings hold exactly,
requests it must not touch are decoded as usual, and /metrics reports its acceptance rate."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gemmakit.bench.lookup import CODE, PASSAGE
from gemmakit.types import GenerationRequest, SamplingParams
from tests.integration.conftest import start_server, stop_server

pytestmark = pytest.mark.integration

COPY = f"Text: {PASSAGE}\n\nThe same text, copied exactly:\n"
EDIT = f"{CODE}\n# The same function, with subtotal renamed to base:\n"


@pytest.fixture(scope="module")
def engines(model_path):
    from gemmakit.engines.llamacpp import LlamaCppEngine

    plain = LlamaCppEngine(model_path, context_length=1024)
    lookup = LlamaCppEngine(model_path, context_length=1024, prompt_lookup=8)
    yield plain, lookup
    asyncio.run(plain.aclose())
    asyncio.run(lookup.aclose())


def _run(engine, text: str, **sp) -> tuple[str, list[int], str | None, int]:
    req = GenerationRequest(prompt_tokens=[2, *engine.tokenize(text)],
                            sampling=SamplingParams(**{"temperature": 0, **sp}),
                            request_id="t")

    async def go():
        out, ids, finish, chunks = "", [], None, 0
        async for c in engine.stream(req):
            out, ids, chunks = out + c.text, ids + c.token_ids, chunks + 1
            finish = c.finish_reason or finish
        return out, ids, finish, chunks

    return asyncio.run(go())


def test_a_copying_reply_accepts_drafts_and_keeps_its_tokens(engines):
    plain, lookup = engines
    before = lookup.lookup_stats.accepted
    text, ids, finish, chunks = _run(lookup, EDIT, max_tokens=64)
    assert lookup.lookup_stats.accepted - before >= 16  # it copies most of the function
    assert chunks < len(ids)  # several tokens came out of one step
    ref_text, ref_ids, _, _ = _run(plain, EDIT, max_tokens=64)
    assert (text, ids) == (ref_text, ref_ids)
    assert finish == "length" and len(ids) == 64


@pytest.mark.parametrize("max_tokens", [1, 2, 9, 33])
def test_max_tokens_is_exact(engines, max_tokens):
    _, lookup = engines
    _, ids, finish, _ = _run(lookup, COPY, max_tokens=max_tokens, ignore_eos=True)
    assert len(ids) == max_tokens and finish == "length"


def test_a_stop_string_inside_an_accepted_draft_ends_the_reply_there(engines):
    plain, lookup = engines
    full, _, _, _ = _run(plain, COPY, max_tokens=80)
    assert "library" in full
    text, _, finish, _ = _run(lookup, COPY, max_tokens=80, stop=["library"])
    assert finish == "stop" and text == full[: full.index("library")]


def test_sampled_and_logprob_requests_are_not_drafted(engines):
    _, lookup = engines
    s = lookup.lookup_stats
    before = (s.steps, s.drafted)
    _run(lookup, EDIT, max_tokens=24, temperature=0.8, seed=3)
    _run(lookup, EDIT, max_tokens=24, logprobs=True, top_logprobs=2)
    assert (s.steps, s.drafted) == before


def test_the_kv_cache_holds_only_accepted_tokens(engines):
    """After a reply with rejected drafts, the same prompt again (its prefix reused from the
    slot's cache) gives the same reply: no stale draft cells were left behind."""
    _, lookup = engines
    first = _run(lookup, COPY + "Again:", max_tokens=48)
    again = _run(lookup, COPY + "Again:", max_tokens=48)
    follow = _run(lookup, COPY + "Again: and once more", max_tokens=24)
    assert first[1] == again[1] and len(follow[1]) == 24


def test_metrics_report_the_acceptance_rate(gemmakit_home, model_path, tmp_path):
    server = start_server(gemmakit_home, tmp_path, "--prompt-lookup", "6", "--parallel", "1")
    try:
        with httpx.Client(base_url=server.base_url, timeout=120) as c:
            r = c.post("/v1/completions", json={"model": "gemma-3-270m", "prompt": EDIT,
                                                "max_tokens": 48, "temperature": 0})
            assert r.status_code == 200, r.text
            metrics = c.get("/metrics").text
    finally:
        stop_server(server)
    label = f'{{model_file="{model_path.name}"}}'
    values = {line.split(" ")[0].removesuffix(label): float(line.split(" ")[1])
              for line in metrics.splitlines()
              if line.startswith("gemmakit_prompt_lookup_") and label in line}
    drafted = values["gemmakit_prompt_lookup_draft_tokens_total"]
    accepted = values["gemmakit_prompt_lookup_accepted_tokens_total"]
    assert drafted > 0 and 0 < accepted <= drafted
    assert values["gemmakit_prompt_lookup_acceptance_ratio"] == pytest.approx(accepted / drafted)
