"""POST /tokenize, POST /detokenize, GET /tokenizer_info (vLLM's shapes) through the real app over
the fake engine: the ids are those the server prefills, and the routes sit behind --auth."""

from __future__ import annotations

import json

from gemmakit.safety.auth import KeyStore
from tests.conftest import SPECIAL_IDS
from tests.unit.monitoring.helpers import value

MODEL = "gemma-test"
HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_tokenize_a_conversation_gives_the_ids_the_server_prefills(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL)
    r = c.post("/tokenize", json={"model": MODEL, "messages": HI})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"count", "max_model_len", "tokens", "token_strs"}
    assert out["max_model_len"] == fake_engine.context_length
    chat = c.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 4})
    assert out["tokens"] == fake_engine.requests[0].prompt_tokens
    assert out["count"] == chat.json()["usage"]["prompt_tokens"]
    # Without the generation prompt the conversation ends after the user's turn.
    bare = c.post("/tokenize", json={"model": MODEL, "messages": HI,
                                     "add_generation_prompt": False}).json()
    assert fake_engine.detokenize(out["tokens"]).endswith("<start_of_turn>model\n")
    assert not fake_engine.detokenize(bare["tokens"]).endswith("model\n")
    # Tokenizing generates nothing: the metrics count the chat request alone.
    metrics = c.get("/metrics").text
    assert value(metrics, "gemmakit_requests_total", model=MODEL, status="200") == 1
    assert value(metrics, "gemmakit_prompt_tokens_total", model=MODEL) == out["count"]


def test_tokenize_a_prompt_and_detokenize_it(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL)
    r = c.post("/tokenize", json={"model": MODEL, "prompt": "The sea", "return_token_strs": True})
    out = r.json()
    assert out["tokens"][0] == SPECIAL_IDS["<bos>"] and out["count"] == 1 + len("The sea")
    assert out["token_strs"][1:] == list("The sea")
    c.post("/v1/completions", json={"model": MODEL, "prompt": "The sea", "max_tokens": 2})
    assert out["tokens"] == fake_engine.requests[-1].prompt_tokens
    raw = c.post("/tokenize", json={"model": MODEL, "prompt": "The sea",
                                    "add_special_tokens": False}).json()
    assert raw["tokens"] == out["tokens"][1:]
    back = c.post("/detokenize", json={"model": MODEL, "tokens": raw["tokens"]})
    assert back.json() == {"prompt": "The sea"}


def test_tokenizer_refusals_are_400s_naming_the_param(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL)
    r = c.post("/detokenize", json={"model": MODEL, "tokens": [1, fake_engine.n_vocab]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
    r = c.post("/tokenize", content=json.dumps({"model": MODEL, "prompt": "a \ud800"}),
               headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = c.post("/tokenize", json={"model": MODEL})
    assert r.status_code == 400
    r = c.post("/tokenize", json={"model": "other", "prompt": "x"})
    assert r.status_code == 404
    assert fake_engine.requests == []


def test_tokenizer_info(make_client, fake_engine):
    c = make_client(fake_engine, model_name=MODEL)
    info = c.get("/tokenizer_info").json()
    assert info["bos_token"] == "<bos>" and info["bos_token_id"] == SPECIAL_IDS["<bos>"]
    assert info["eos_token"] == "<eos>" and info["eos_token_id"] == SPECIAL_IDS["<eos>"]
    assert info["special_tokens"]["<end_of_turn>"] == SPECIAL_IDS["<end_of_turn>"]
    assert "<start_of_turn>" in info["chat_template"]
    assert info["model_max_length"] == fake_engine.context_length


def test_tokenizer_routes_need_a_key_with_auth_and_are_in_the_ledger(make_client, fake_engine,
                                                                      tmp_path):
    home = tmp_path / "home"
    store = KeyStore(home)
    _, secret = store.create("alice")
    c = make_client(fake_engine, model_name=MODEL, home=home, auth=True)
    for method, path, body in (("post", "/tokenize", {"model": MODEL, "prompt": "x"}),
                               ("post", "/detokenize", {"model": MODEL, "tokens": [2]}),
                               ("get", "/tokenizer_info", None)):
        kw = {"json": body} if body is not None else {}
        assert getattr(c, method)(path, **kw).status_code == 401
        ok = getattr(c, method)(path, headers={"Authorization": f"Bearer {secret}"}, **kw)
        assert ok.status_code == 200, ok.text
    summary = c.get("/v1/usage", headers={"Authorization": f"Bearer {secret}"}).json()
    assert summary["last_hour"]["requests"] >= 3
    store.close()
