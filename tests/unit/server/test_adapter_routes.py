"""The adapter admin routes and adapter names on the real app (fake engine): --auth needs a key,
a key's model scope applies to adapter names, unknown adapters are 404 naming `lora_name`, and
a stored adapter trained on another base is a 400 for the admin route and for a generation."""

from __future__ import annotations

import json

import pytest

from gemmakit.safety.auth import KeyStore
from tests.unit.safety.test_guard import CHAT, MODEL, assert_error, bearer, chat

LOAD, UNLOAD = "/v1/adapters/load", "/v1/adapters/unload"


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    d = h / "adapters" / "elsewhere"
    d.mkdir(parents=True)
    (d / "gemmakit-adapter.json").write_text(json.dumps({
        "name": "elsewhere", "base": {"model": "gemma-3-1b", "sha256": "0" * 64},
        "hyperparameters": {"lora_rank": 16, "lora_alpha": 32}}))
    return h


def test_admin_routes_need_a_key_and_respect_its_scope(make_client, fake_engine, home) -> None:
    keys = KeyStore(home)
    _, other = keys.create("other", models=["someone-else"])
    _, scoped = keys.create("scoped", models=["elsewhere", "missing"])
    keys.close()
    c = make_client(fake_engine, model_name=MODEL, home=home, auth=True)
    assert_error(c.post(LOAD, json={"lora_name": "elsewhere"}), 401)
    assert_error(c.post(LOAD, json={"lora_name": "elsewhere"}, headers=bearer(other)), 403,
                 param="lora_name")
    assert_error(c.post(UNLOAD, json={"lora_name": "elsewhere"}, headers=bearer(other)), 403)
    err = assert_error(c.post(LOAD, json={"lora_name": "missing"}, headers=bearer(scoped)), 404,
                       param="lora_name")
    assert "missing" in err["message"]
    err = assert_error(c.post(LOAD, json={"lora_name": "elsewhere"}, headers=bearer(scoped)),
                       400, "adapter_base_mismatch", "lora_name")
    assert "gemma-3-1b" in err["message"]
    assert_error(c.post(UNLOAD, json={"lora_name": "elsewhere"}, headers=bearer(scoped)), 404,
                 param="lora_name")
    assert_error(c.post(LOAD, json={}, headers=bearer(scoped)), 400)


def test_a_request_for_an_adapter_of_another_base_is_a_400(make_client, fake_engine,
                                                           home) -> None:
    c = make_client(fake_engine, model_name=MODEL, home=home)
    body = chat()
    body["model"] = "elsewhere"
    err = assert_error(c.post(CHAT, json=body), 400, "adapter_base_mismatch", "model")
    assert "gemma-3-1b" in err["message"] and MODEL in err["message"]
    body["model"] = "never-stored"
    assert_error(c.post(CHAT, json=body), 404, param="model")
    assert [m["id"] for m in c.get("/v1/models").json()["data"]] == [MODEL]
