"""EleutherAI's lm-evaluation-harness against the real server, as its users run it:
`local-completions` with the server's own tokenizer (/tokenizer_info, /tokenize, /detokenize), on
two small local tasks (tests/data/lm_eval, no hub access): a log-likelihood multiple-choice task,
scored through /v1/completions with echo, and a generate-until task. Every figure the harness
reports is checked against the server's own answers for the same token ids. One request at a
time: two sequences decoded in one batch shift their logits slightly (docs/batching.md), and the
check compares with requests sent alone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

TASKS = Path(__file__).parent.parent / "data" / "lm_eval"
MODEL = "gemma-3-270m"


def _task(name: str) -> dict:
    cfg = yaml.safe_load((TASKS / f"{name}.yaml").read_text())
    files = cfg["dataset_kwargs"]["data_files"]
    cfg["dataset_kwargs"]["data_files"] = {k: str(TASKS / v) for k, v in files.items()}
    return cfg


@pytest.fixture(scope="module")
def evaluation(server, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("datasets")))
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager

        yield lm_eval.simple_evaluate(
            model="local-completions",
            model_args=f"model={MODEL},base_url={server.base_url}/v1/completions,"
                       "tokenizer_backend=remote,num_concurrent=1,max_retries=1",
            tasks=[_task("gemmakit_capitals"), _task("gemmakit_counting")],
            log_samples=True, task_manager=TaskManager())
    finally:
        mp.undo()


def _ids(http, text: str) -> list[int]:
    r = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False})
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def test_the_multiple_choice_task_scores_with_the_servers_logprobs(evaluation, http):
    res = evaluation["results"]["gemmakit_capitals"]
    samples = evaluation["samples"]["gemmakit_capitals"]
    assert res["sample_len"] == len(samples) == 8
    assert res["acc,none"] > 0.25  # above chance (four choices)
    accs = []
    for s in samples:
        totals = []
        for (context, continuation), resp in zip(s["arguments"], s["resps"]):
            (logprob, greedy), = resp
            ctx = _ids(http, context)
            ids = _ids(http, context + continuation)
            assert ids[:len(ctx)] == ctx
            r = http.post("/v1/completions", json={"model": MODEL, "prompt": ids, "echo": True,
                                                   "logprobs": 1, "max_tokens": 0})
            lp = r.json()["choices"][0]["logprobs"]
            cont = lp["token_logprobs"][len(ctx):]
            assert math.isclose(sum(cont), logprob, abs_tol=1e-3)
            assert greedy == all(math.isclose(t, max(top.values()), abs_tol=1e-9)
                                 for t, top in zip(cont, lp["top_logprobs"][len(ctx):]))
            totals.append(sum(cont))
        accs.append(float(max(range(len(totals)), key=totals.__getitem__) == s["target"]))
    assert math.isclose(sum(accs) / len(accs), res["acc,none"])


def test_the_generate_until_task_gets_the_servers_greedy_answers(evaluation, http):
    res = evaluation["results"]["gemmakit_counting"]
    samples = evaluation["samples"]["gemmakit_counting"]
    assert res["sample_len"] == len(samples) == 6
    hits = 0
    for s in samples:
        (prompt, kwargs), = s["arguments"]
        r = http.post("/v1/completions", json={
            "model": MODEL, "prompt": _ids(http, prompt), "max_tokens": kwargs["max_gen_toks"],
            "temperature": 0, "stop": kwargs["until"]})
        text = r.json()["choices"][0]["text"]
        assert s["resps"] == [[text]]
        hits += text.strip().lower() == s["target"].lower()
    assert math.isclose(hits / len(samples), res["exact_match,strip"])
    assert res["exact_match,strip"] > 0  # the model counts at least once
