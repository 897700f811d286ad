"""Audio through the real server into the tiny random Gemma 3n: OpenAI's transcription and
translation endpoints through the openai client, input_audio chat parts, and refusals."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest

from tests.integration.transformers.conftest import openai_client
from tests.media_samples import png_bytes, wav_bytes

pytestmark = pytest.mark.integration

MODEL = "tiny-gemma3n"


def test_transcription_through_the_openai_client(audio_server):
    client = openai_client(audio_server)
    r = client.audio.transcriptions.create(model=MODEL, file=("clip.wav", wav_bytes(1.0)),
                                           language="en", prompt="Gemma")
    assert isinstance(r.text, str)
    # Gemma 3n reads every clip as 188 audio tokens: the prompt holds them.
    assert r.usage.input_tokens > 188 and r.usage.output_tokens >= 1
    verbose = client.audio.transcriptions.create(model=MODEL, file=("clip.flac",
                                                 wav_bytes(1.5, fmt="FLAC")),
                                                 response_format="verbose_json")
    assert verbose.duration == pytest.approx(1.5, abs=0.01) and verbose.language == "unknown"
    text = client.audio.transcriptions.create(model=MODEL, file=("clip.wav", wav_bytes(0.5)),
                                              response_format="text")
    assert isinstance(text, str)


def test_translation_through_the_openai_client(audio_server):
    r = openai_client(audio_server).audio.translations.create(
        model=MODEL, file=("clip.wav", wav_bytes(1.0, rate=8000)))
    assert isinstance(r.text, str)


def test_input_audio_chat_part(audio_server):
    client = openai_client(audio_server)
    audio = {"type": "input_audio",
             "input_audio": {"data": base64.b64encode(wav_bytes(0.5)).decode(), "format": "wav"}}
    base = client.chat.completions.create(model=MODEL, max_tokens=2, temperature=0, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    with_audio = client.chat.completions.create(model=MODEL, max_tokens=2, temperature=0,
                                                messages=[{"role": "user", "content": [
                                                    {"type": "text", "text": "Hi"}, audio]}])
    # "\n\n" <start_of_audio> 188 x <audio_soft_token> <end_of_audio> "\n\n"
    assert with_audio.usage.prompt_tokens == base.usage.prompt_tokens + 188 + 4


def _post(server, path: str, files, **data) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", files=files,
                      data={"model": MODEL, **data}, timeout=60)


@pytest.mark.parametrize(("name", "payload", "param"), [
    ("long.wav", wav_bytes(6.0), "file"),                 # over --max-audio-seconds 5
    ("bad.wav", b"RIFF....WAVEfmt garbage", "file"),      # corrupt
    ("clip.aiff", wav_bytes(0.5), "file"),                # no supported format name
    ("clip.flac", wav_bytes(0.5), "file"),                # WAV data named FLAC
    ("empty.wav", b"", "file"),
])
def test_bad_audio_is_400_naming_the_file(audio_server, name, payload, param):
    r = _post(audio_server, "/v1/audio/transcriptions", {"file": (name, payload)})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_bad_form_fields(audio_server):
    wav = {"file": ("a.wav", wav_bytes(0.2))}
    r = _post(audio_server, "/v1/audio/transcriptions", wav, response_format="srt")
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    r = _post(audio_server, "/v1/audio/transcriptions", wav, language="English!")
    assert r.status_code == 400 and r.json()["error"]["param"] == "language"
    r = httpx.post(f"{audio_server.base_url}/v1/audio/translations", data={"model": MODEL},
                   timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"


def test_images_refused_by_gemma3n_without_vision_tower(audio_server):
    url = "data:image/png;base64," + base64.b64encode(png_bytes(8, 8)).decode()
    with pytest.raises(openai.BadRequestError) as ei:
        openai_client(audio_server).chat.completions.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": [
                {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": url}}]}])
    body = ei.value.body
    err = body.get("error", body)
    assert err["param"] == "messages[0].content[1]" and "vision" in err["message"]


def test_audio_routes_go_through_the_pipeline(tiny_dir, tmp_path):
    """`gemmakit serve --auth --config cfg.toml` with an input rule: a transcription whose prompt
    breaks it is refused; one that does not is booked in the usage ledger and /metrics with
    exactly the tokens its response reports."""
    from gemmakit.safety.auth import KeyStore
    from gemmakit.safety.store import connect
    from tests.integration.conftest import start_server, stop_server
    from tests.unit.monitoring.helpers import value

    home = tmp_path / "home"
    store = KeyStore(home)
    _, secret = store.create("alice")
    store.close()
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[[policy.rules]]\nname = "bird"\nkeywords = ["Bluebird"]\naction = "block"\n'
                   'apply_to = ["input"]\n')
    s = start_server(home, tmp_path, "--engine", "transformers", "--model",
                     str(tiny_dir / "gemma3n"), "--served-model-name", MODEL, "--auth",
                     "--config", str(cfg), "--max-transcript-tokens", "4", "--threads", "2")
    try:
        auth = {"Authorization": f"Bearer {secret}"}
        clip = {"file": ("clip.wav", wav_bytes(0.5), "audio/wav")}
        r = httpx.post(f"{s.base_url}/v1/audio/transcriptions", files=clip, headers=auth,
                       data={"model": MODEL, "prompt": "Bluebird"}, timeout=60)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "content_policy_violation"
        assert r.json()["error"]["param"] == "prompt"
        ok = httpx.post(f"{s.base_url}/v1/audio/translations", files=clip, headers=auth,
                        data={"model": MODEL, "prompt": "names"}, timeout=60)
        assert ok.status_code == 200, ok.text
        usage = ok.json()["usage"]
        metrics = httpx.get(f"{s.base_url}/metrics").text
        assert value(metrics, "gemmakit_prompt_tokens_total", model=MODEL) == \
            usage["input_tokens"] > 188
        assert value(metrics, "gemmakit_generation_tokens_total", model=MODEL) == \
            usage["output_tokens"]
        assert value(metrics, "gemmakit_requests_total", model=MODEL, status="400") == 1
    finally:
        stop_server(s)
    conn = connect(home)
    rows = {r["request_id"]: r for r in conn.execute("SELECT * FROM usage")}
    conn.close()
    row = rows[ok.headers["x-request-id"]]
    assert (row["key_name"], row["prompt_tokens"], row["completion_tokens"]) == \
        ("alice", usage["input_tokens"], usage["output_tokens"])
    assert rows[r.headers["x-request-id"]]["status"] == 400
