"""`gemmakit batch`: an OpenAI Batch file through the real engine, resumable."""

from __future__ import annotations

import json

import pytest

from .conftest import MODEL
from .test_cli import gk

pytestmark = pytest.mark.integration


def _lines() -> list[str]:
    out = []
    for i in range(18):
        if i % 2:
            req = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": MODEL, "max_tokens": 3, "temperature": 0,
                            "messages": [{"role": "user", "content": f"Say {i}"}]}}
        else:
            req = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                   "body": {"model": MODEL, "max_tokens": 3, "temperature": 0,
                            "prompt": f"Number {i} is"}}
        out.append(json.dumps(req))
    out.insert(5, "{not json")
    out.insert(11, json.dumps({"custom_id": "bad-url", "method": "POST", "url": "/v1/nope",
                               "body": {}}))
    return out


def test_batch_file_with_invalid_lines_and_resume(gemmakit_home, model_path, tmp_path):
    inp, outp = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("\n".join(_lines()) + "\n")
    args = ("batch", str(inp), "-o", str(outp), "--no-progress", "--context-length", "512",
            "--parallel", "4")
    r = gk(gemmakit_home, *args)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in outp.read_text().splitlines()]
    assert len(recs) == 20
    ok = [x for x in recs if x["response"] and x["response"]["status_code"] == 200]
    errs = [x for x in recs if x["error"]]
    assert len(ok) == 18 and len(errs) == 2
    assert {x["custom_id"] for x in ok} == {f"c{i}" for i in range(18)}
    assert {x["line"] for x in errs} == {6, 12}
    for x in ok:
        body = x["response"]["body"]
        assert body["usage"]["completion_tokens"] <= 3
        assert body["object"] in ("chat.completion", "text_completion")

    # Resume: nothing left to do; then drop three results and only those run again.
    r = gk(gemmakit_home, *args)
    assert "0 succeeded, 0 failed, 20 already done" in r.stderr
    kept = [x for x in outp.read_text().splitlines()
            if json.loads(x)["custom_id"] not in ("c3", "c4", "c5")]
    outp.write_text("\n".join(kept) + "\n")
    r = gk(gemmakit_home, *args)
    assert "3 succeeded, 0 failed, 17 already done" in r.stderr, r.stderr
    recs = [json.loads(x) for x in outp.read_text().splitlines()]
    assert len(recs) == 20 and len({x["custom_id"] or x["line"] for x in recs}) == 20
