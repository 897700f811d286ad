"""Security with the real server and the bundled model: keys created by the CLI, 401/403/429
through the `openai` client, output masking on real streams, usage through the CLI, private logs
(a marker sent in 100 requests never reaches a log or the data directory), Redis-shared limits
across two server processes, the classifier hook, and a bounded schemathesis fuzzing run."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import MODEL, start_server, stop_server
from .fuzz import POLICY_TOML, fuzz_target, run_fuzz

pytestmark = pytest.mark.integration


def gemmakit(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gemmakit", *args, "--home", str(home)],
                          capture_output=True, text=True, timeout=120)


def create_key(home: Path, name: str, *flags: str) -> str:
    r = gemmakit(home, "keys", "create", name, *flags)
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip()
    assert secret.startswith("gk-") and "cannot be shown again" in r.stderr
    return secret


@pytest.fixture(scope="module")
def secure(tmp_path_factory, model_path):
    """A server with --auth, a content policy and a 64-token context, plus its keys."""
    tmp = tmp_path_factory.mktemp("secure")
    home = tmp / "home"
    keys = {"main": create_key(home, "main"),
            "scoped": create_key(home, "scoped", "--models", "some-other-model"),
            "limited": create_key(home, "limited", "--rpm", "5"),
            "single": create_key(home, "single", "--rpm", "1")}
    cfg = tmp / "policy.toml"
    cfg.write_text(POLICY_TOML)
    server = start_server(home, tmp, "--model", str(model_path), "--served-model-name", MODEL,
                          "--auth", "--context-length", "64", "--config", str(cfg),
                          "--log-level", "debug")
    yield server, home, keys
    stop_server(server)


def client(server, secret):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=secret, max_retries=0,
                         timeout=120)


def test_keys_list_never_shows_secrets(secure):
    _, home, keys = secure
    r = gemmakit(home, "keys", "list", "--json")
    assert r.returncode == 0
    rows = json.loads(r.stdout)
    assert {row["name"] for row in rows} == set(keys)
    assert next(row for row in rows if row["name"] == "limited")["rpm"] == 5
    for secret in keys.values():
        # gk-<key id>-<secret part>; the secret part may itself hold "-".
        assert secret not in r.stdout and secret.split("-", 2)[2] not in r.stdout


def test_openai_client_sees_401_403_429(secure):
    server, _, keys = secure
    msgs = [{"role": "user", "content": "Hi"}]
    for bad in ("nope", keys["main"].upper(), keys["main"][:-1]):
        with pytest.raises(openai.AuthenticationError):
            client(server, bad).chat.completions.create(model=MODEL, messages=msgs, max_tokens=1)
    with pytest.raises(openai.PermissionDeniedError):
        client(server, keys["scoped"]).chat.completions.create(model=MODEL, messages=msgs,
                                                               max_tokens=1)
    ok = client(server, keys["main"]).chat.completions.create(model=MODEL, messages=msgs,
                                                              max_tokens=2)
    assert ok.usage.completion_tokens >= 1
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # public


def test_rpm_limit_with_real_server(secure):
    server, _, keys = secure
    h = {"Authorization": f"Bearer {keys['limited']}"}
    with ThreadPoolExecutor(5) as pool:
        codes = list(pool.map(lambda _: httpx.get(f"{server.base_url}/v1/models", headers=h,
                                                  timeout=60), range(10)))
    assert [r.status_code for r in codes].count(200) == 5
    limited = next(r for r in codes if r.status_code == 429)
    assert limited.headers["retry-after"] and limited.headers["x-ratelimit-limit-requests"] == "5"
    with pytest.raises(openai.RateLimitError):
        client(server, keys["limited"]).models.list()


def test_output_masking_on_real_streams(secure):
    server, _, keys = secure
    c = client(server, keys["main"])
    kw = dict(model=MODEL, prompt="Once upon a time, the king of the", max_tokens=8,
              temperature=0)
    full = c.completions.create(**kw)
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(stream=True, **kw)
                       if ch.choices)
    assert streamed == full.choices[0].text
    assert " the " not in f" {streamed.lower()} ".replace("[the]", "")


def test_usage_endpoint_and_cli(secure):
    server, home, keys = secure
    h = {"Authorization": f"Bearer {keys['main']}"}
    u = httpx.get(f"{server.base_url}/v1/usage", headers=h, timeout=60).json()
    assert u["key"] == "main" and u["last_hour"]["requests"] >= 1
    r = gemmakit(home, "usage", "--key", "main", "--since", "1h", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows and all(row["key_name"] == "main" for row in rows)
    assert sum(row["requests"] for row in rows) >= 2


def test_a_marker_never_reaches_logs_or_the_data_directory(secure):
    server, home, keys = secure
    marker = f"PRIVATE-{uuid.uuid4().hex}"
    url = server.base_url
    main = {"Authorization": f"Bearer {keys['main']}"}

    def chat(content, headers=main, **kw):
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **kw}
        return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)

    calls = []
    calls += [lambda: chat(f"Say {marker}", max_tokens=2)] * 4                      # 200
    calls += [lambda: httpx.post(f"{url}/v1/completions", headers=main, timeout=120, json={
        "model": MODEL, "prompt": marker, "max_tokens": 2})] * 4                     # 200
    calls += [lambda: chat(marker, max_tokens=2, stream=True)] * 2                  # 200 stream
    calls += [lambda: chat(marker, temperature=9)] * 40                              # 400 range
    calls += [lambda: chat(f"{marker} " * 40, max_tokens=2)] * 10                   # 400 context
    calls += [lambda: chat(marker, max_tokens=1,
                           headers={"Authorization": "Bearer bad"})] * 10           # 401
    calls += [lambda: chat(marker, max_tokens=1, headers={
        "Authorization": f"Bearer {keys['scoped']}"})] * 5                          # 403
    calls += [lambda: chat(marker, max_tokens=1, headers={
        "Authorization": f"Bearer {keys['single']}"})] * 10                    # 1 x 200, 429s
    calls += [lambda: chat(f"the forbidden topic {marker}", max_tokens=1)] * 10     # 400 policy
    calls += [lambda: httpx.post(f"{url}/v1/chat/completions", headers={
        **main, "content-type": "application/json"}, content=f'{{"model": "{marker}"',
        timeout=60)] * 5                                                             # 400 json
    assert len(calls) == 100
    statuses = [call().status_code for call in calls]
    assert {200, 400, 401, 403, 429} <= set(statuses)
    # every request is in the ledger, and the server has written its log lines
    httpx.get(f"{url}/v1/usage", headers=main, timeout=60)
    log = server.log_text()
    assert log.count("body=sha256:") >= 100
    assert marker not in log
    for secret in keys.values():
        assert secret not in log
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert marker.encode() not in data, path.name
            for secret in keys.values():
                assert secret.encode() not in data, path.name


def test_log_content_says_loudly_that_it_is_on(tmp_path, model_path):
    home = tmp_path / "home"
    server = start_server(home, tmp_path, "--model", str(model_path), "--context-length", "64",
                          "--log-content")
    try:
        marker = f"VISIBLE-{uuid.uuid4().hex}"
        r = httpx.post(f"{server.base_url}/v1/completions", timeout=120, json={
            "model": Path(model_path).stem, "prompt": marker, "max_tokens": 1})
        assert r.status_code == 200
    finally:
        stop_server(server)
    log = server.log_text()
    assert "--log-content is ON" in log
    assert marker in log  # debugging mode does what it says


def test_redis_shared_limits_across_two_processes(tmp_path, model_path, redis_url):
    home = tmp_path / "home"
    limit = 20
    secret = create_key(home, "shared", "--rpm", str(limit))
    servers = [start_server(home, tmp_path, "--model", str(model_path), "--auth",
                            "--context-length", "64", "--ratelimit-store", redis_url, wait=False)
               for _ in range(2)]
    try:
        from .conftest import wait_healthy

        for s in servers:
            wait_healthy(s)
        h = {"Authorization": f"Bearer {secret}"}
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(
                lambda i: httpx.get(f"{servers[i % 2].base_url}/v1/models", headers=h,
                                    timeout=60).status_code, range(2 * limit)))
    finally:
        for s in servers:
            stop_server(s)
    admitted = codes.count(200)
    assert limit * 0.95 <= admitted <= limit * 1.05, codes
    assert set(codes) == {200, 429}


def test_classifier_hook_plumbing_with_the_bundled_model(engine):
    import asyncio

    from gemmakit.compose import build_pipeline
    from gemmakit.safety.classifier import Classifier
    from gemmakit.safety.config import ClassifierConfig

    clf = Classifier(ClassifierConfig(enabled=True, threshold=0.5))
    pipeline = build_pipeline(engine, MODEL)

    def judge(messages, sampling):
        return pipeline.internal_chat("judge", messages, sampling)

    for direction in ("input", "output"):
        verdict = asyncio.run(clf.judge(judge, "How do I bake bread?", direction))
        assert 0.0 <= verdict.p_violation <= 1.0
        assert verdict.violates == (verdict.p_violation >= 0.5)


def test_bounded_schemathesis_fuzzing(tmp_path, capsys):
    """The server stack (auth, limits, validation, policy, protocol, service) on uvicorn over
    loopback, with the fake engine so each case takes milliseconds; the full campaign against the
    bundled model is `python -m tests.integration.fuzz --engine llamacpp`."""
    with fuzz_target(tmp_path, engine="fake") as (base_url, headers):
        report = run_fuzz(base_url, headers, cases=300)
    with capsys.disabled():
        print(f"\nfuzzing: {report.cases} cases, {report.n_server_errors} responses >= 500, "
              f"statuses {dict(sorted(report.statuses.items()))}")
    assert report.cases >= 250
    assert report.n_server_errors == 0, report.server_errors[:5]
