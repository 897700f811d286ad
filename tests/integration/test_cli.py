"""The `gemmakit` command line, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from .conftest import MODEL, start_server, stop_server

pytestmark = pytest.mark.integration


def gk(home, *args, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gemmakit", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "GEMMAKIT_HOME": str(home)})


def test_models_lists_the_bundled_model_from_its_metadata(gemmakit_home, model_path):
    r = gk(gemmakit_home, "models", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    row = next(x for x in rows if x["name"] == MODEL)
    assert row["quantization"] == "Q4_K_M"
    assert row["context_length"] == 32768
    assert row["architecture"] == "gemma3"
    assert row["modalities"] == ["text"]
    assert row["size_bytes"] == model_path.stat().st_size


def test_complete_matches_the_server(gemmakit_home, client):
    r = gk(gemmakit_home, "complete", "The first month of the year is", "--temperature", "0",
           "--max-tokens", "12", "--context-length", "4096")
    assert r.returncode == 0, r.stderr
    server = client.completions.create(model=MODEL, prompt="The first month of the year is",
                                       max_tokens=12, temperature=0).choices[0].text
    assert r.stdout == server + "\n"


def test_chat_one_shot_matches_the_server(gemmakit_home, client):
    r = gk(gemmakit_home, "chat", "Name a colour.", "--system", "Be brief.", "--temperature",
           "0", "--max-tokens", "10", "--context-length", "4096")
    assert r.returncode == 0, r.stderr
    server = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=10,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Name a colour."}]).choices[0].message.content
    assert r.stdout == server + "\n"


def test_chat_repl_keeps_history_and_resets(gemmakit_home, client):
    r = gk(gemmakit_home, "chat", "--temperature", "0", "--max-tokens", "6",
           stdin="Hello\nHow are you?\n/reset\nHow are you?\n/bye\n")
    assert r.returncode == 0, r.stderr
    replies = r.stdout.splitlines()
    assert "(conversation cleared)" in r.stderr
    # Second turn saw the first; after /reset the same question is asked fresh, as the server
    # would answer it alone.
    alone = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=6,
        messages=[{"role": "user", "content": "How are you?"}]).choices[0].message.content
    assert alone.splitlines()[0] in replies[len(replies) - len(alone.splitlines()):][0]


def test_bad_flag_value_is_a_clear_error(gemmakit_home):
    r = gk(gemmakit_home, "complete", "x", "--temperature", "5")
    assert r.returncode != 0
    assert "temperature" in r.stderr and "Traceback" not in r.stderr


def test_serve_settings_precedence(gemmakit_home, model_path, tmp_path):
    """flags > --config TOML > GEMMAKIT_* environment > defaults, on a real server."""
    cfg = tmp_path / "gemmakit.toml"
    cfg.write_text('served_model_name = "from-toml"\nmax_body_bytes = 4096\n')
    env = {"GEMMAKIT_SERVED_MODEL_NAME": "from-env", "GEMMAKIT_MAX_BODY_BYTES": "999999"}
    s = start_server(gemmakit_home, tmp_path, "--config", str(cfg), env=env)
    try:
        models = httpx.get(f"{s.base_url}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["from-toml"]
        r = httpx.post(f"{s.base_url}/v1/completions",
                       json={"model": "from-toml", "prompt": "x" * 5000})
        assert r.status_code == 413  # the TOML's 4096-byte limit, not the environment's
    finally:
        stop_server(s)
    s = start_server(gemmakit_home, tmp_path, "--config", str(cfg), "--served-model-name",
                     "from-flag", env=env)
    try:
        models = httpx.get(f"{s.base_url}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["from-flag"]
    finally:
        stop_server(s)


BLOCK_BLUEBIRD = ('[[policy.rules]]\nname = "bird"\nkeywords = ["Bluebird"]\naction = "block"\n'
                  'apply_to = ["input"]\n')


def test_in_process_callers_go_through_the_pipeline(gemmakit_home, model_path, tmp_path):
    """`gemmakit chat`/`complete` and the Python API run requests through the same pipeline as
    the server: the content policy of their settings applies, and the one composition root
    honours --served-model-name and the tool parser."""
    import gemmakit
    from gemmakit.safety.policy import PolicyViolationError

    cfg = tmp_path / "cfg.toml"
    cfg.write_text(BLOCK_BLUEBIRD)
    for cmd in (["chat", "Say hi to Bluebird"], ["complete", "Bluebird says"]):
        r = gk(gemmakit_home, *cmd, "--config", str(cfg), "--max-tokens", "4",
               "--context-length", "512")
        assert r.returncode == 2 and "content policy" in r.stderr, r.stderr
    gemma = gemmakit.load("gemma-3-270m", home=gemmakit_home, context_length=512,
                          served_model_name="my-gemma", tool_parser="pythonic",
                          policy={"rules": [{"name": "bird", "keywords": ["Bluebird"],
                                             "action": "block"}]})
    try:
        assert gemma.model_name == "my-gemma"
        assert gemma.pipeline.service.tool_parser == "pythonic"
        with pytest.raises(PolicyViolationError):
            gemma.chat("Hello Bluebird", max_tokens=4)
        result = gemma.chat("Hello", max_tokens=4, temperature=0)
        assert result.completion_tokens == 4 and result.prompt_tokens > 0
    finally:
        gemma.close()


def test_serve_fit_plans_context_and_parallel_before_loading(gemmakit_home, model_path, tmp_path):
    """`gemmakit serve --fit 700MB` prints the plan before it loads, and serves with it."""
    s = start_server(gemmakit_home, tmp_path, "--fit", "700MB")
    try:
        log = s.log_text()
        assert "--fit 700.00 MB" in log and "--context-length 4096" in log, log
        parallel = int(log.split("--parallel ")[1].split()[0])
        card = httpx.get(f"{s.base_url}/v1/models").json()["data"][0]
        assert card["context_length"] == 4096  # the flag start_server passes stays fixed
        assert parallel >= 1
    finally:
        stop_server(s)
    r = gk(gemmakit_home, "serve", "--fit", "100MB", "--port", "0")
    assert r.returncode == 2 and "fit" in r.stderr.lower(), r.stderr
