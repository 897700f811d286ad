"""Monitoring against the real server and model: /metrics equals the usage the openai client saw,
/ready probes the real engine, `gemmakit top` reads /metrics, and `gemmakit eval quality` runs a
suite through the server and in-process (reference perplexity by teacher forcing)."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import MODEL
from .test_cli import gk

pytestmark = pytest.mark.integration


def _values(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_match_the_usage_clients_saw(client, http):
    before = _values(http.get("/metrics").text)
    prompt_tokens = completion_tokens = 0
    r = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=6,
                                  temperature=0, n=2)
    prompt_tokens += r.usage.prompt_tokens
    completion_tokens += r.usage.completion_tokens
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=5,
        stream=True, stream_options={"include_usage": True})
    usage = [e.usage for e in stream if e.usage][0]
    prompt_tokens += usage.prompt_tokens
    completion_tokens += usage.completion_tokens
    # A request is reported when its last byte has gone out, which can be just after the client
    # has read it: wait (briefly) until both requests are in.
    key = ("gemmakit_requests_total", tuple(sorted({"model": MODEL, "status": "200"}.items())))
    deadline = time.time() + 10
    while True:
        after = _values(http.get("/metrics").text)
        if after.get(key, 0.0) - before.get(key, 0.0) >= 2 or time.time() > deadline:
            break
        time.sleep(0.05)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"model": MODEL, **labels}.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("gemmakit_prompt_tokens_total") == prompt_tokens
    assert delta("gemmakit_generation_tokens_total") == completion_tokens
    assert delta("gemmakit_requests_total", status="200") == 2
    # the real engine's stats: one TTFT and one queue time per sequence (2 + 1)
    assert delta("gemmakit_time_to_first_token_seconds_count") == 3
    assert delta("gemmakit_request_queue_time_seconds_count") == 3
    assert after[("process_resident_memory_bytes", ())] > 100e6  # the model is in memory


def test_ready_probes_the_real_engine(http):
    r = http.get("/ready")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] in ("healthy", "degraded") and body["model"] == MODEL
    assert body["probe_latency_seconds"] > 0


def test_top_reads_the_servers_metrics(gemmakit_home, server, client):
    client.completions.create(model=MODEL, prompt="One, two,", max_tokens=3, temperature=0)
    r = gk(gemmakit_home, "top", "--url", server.base_url, "--once", "--interval", "0.2")
    assert r.returncode == 0, r.stderr
    assert "TTFT p50 / p95" in r.stdout and "requests / s" in r.stdout
    assert " ms" in r.stdout or " s " in r.stdout  # lifetime percentiles from real requests
    assert "MiB" in r.stdout


SUITE = [
    {"id": "fr", "prompt": "The capital of France is", "max_tokens": 6, "contains": "Paris",
     "reference": " Paris."},
    {"id": "count", "prompt": "1, 2, 3, 4,", "max_tokens": 4, "regex": r"5"},
]


def test_eval_quality_over_http_and_in_process(gemmakit_home, server, tmp_path):
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps(x) + "\n" for x in SUITE))
    out_http, out_local = tmp_path / "http.json", tmp_path / "local.json"
    r = gk(gemmakit_home, "eval", "quality", str(suite), "--url", server.base_url,
           "-o", str(out_http))
    assert r.returncode == 0, r.stderr
    assert "checks passed" in r.stdout
    rep = json.loads(out_http.read_text())
    assert rep["target"] == f"{server.base_url}/v1"
    assert [i["id"] for i in rep["items"]] == ["fr", "count"]
    assert all(i["ok"] for i in rep["items"]), rep["items"]
    assert rep["performance"]["success_rate"] == 1.0
    assert rep["performance"]["ttft_p50_s"] > 0
    assert "perplexity_output" in rep["items"][0]["scores"]  # logprobs over HTTP
    assert "perplexity_reference" not in rep["items"][0]["scores"]  # not possible over HTTP

    r = gk(gemmakit_home, "eval", "quality", str(suite), "-o", str(out_local),
           "--context-length", "1024", timeout=300)
    assert r.returncode == 0, r.stderr
    local = json.loads(out_local.read_text())
    # greedy decoding: the same outputs in-process and through the server
    assert [i["output"] for i in local["items"]] == [i["output"] for i in rep["items"]]
    ppl = local["items"][0]["scores"]["perplexity_reference"]
    assert ppl >= 1.0


def test_reference_logprobs_are_the_models_own_for_each_forced_token(engine):
    """Teacher forcing scores reference token k with the prompt plus the reference's first k
    tokens; the value must be exactly what the model itself reports for that token in that
    context (found among the top alternatives of an unforced step). Comparing with the logprobs
    of an incremental generation instead would be off by llama.cpp's batched-vs-single-token
    arithmetic (measured up to 0.25 nats on this Q4 model; see docs/monitoring.md)."""
    import asyncio

    from gemmakit.compose import build_pipeline
    from gemmakit.monitoring.evals.suite import EvalItem
    from gemmakit.monitoring.evals.targets import LocalTarget
    from gemmakit.types import GenerationRequest, SamplingParams

    item = EvalItem(prompt="The largest ocean on Earth is the", reference=" Pacific Ocean.")

    async def go():
        target = LocalTarget(build_pipeline(engine, MODEL))
        forced = await target.reference_logprobs(item)
        prompt = target.pipeline.service.prepare_completion(
            [item.prompt], SamplingParams(max_tokens=1), "t").prompt_token_lists[0]
        ref = engine.tokenize(item.reference)
        own = []
        for k, tok in enumerate(ref):
            req = GenerationRequest(prompt_tokens=prompt + ref[:k], request_id=f"t{k}",
                                    sampling=SamplingParams(max_tokens=1, temperature=0,
                                                            logprobs=True, top_logprobs=20))
            lp = [e async for c in engine.stream(req) for e in c.logprobs][0]
            piece = engine.token_piece(tok).decode()
            own.append(next(t.logprob for t in lp.top if t.token == piece))
        return forced, own

    forced, own = asyncio.run(go())
    assert len(forced) == len(own) >= 3
    assert forced == pytest.approx(own, abs=1e-6)
    assert all(x < 0 for x in forced)
