"""The catalog's facts: the real Gemma family, each fact with a source, nothing invented."""

from __future__ import annotations

import tomllib
from importlib import resources

import pytest

from gemmakit.catalog.data import load_catalog, parse
from gemmakit.catalog.weights import parameter_count
from gemmakit.errors import ConfigError

REQUIRED = {"gemma-3-270m", "gemma-3-1b", "gemma-3-4b", "gemma-3-12b", "gemma-3-27b",
            "gemma-3n-e2b", "gemma-3n-e4b"}


def _doc() -> dict:
    text = (resources.files("gemmakit.catalog") / "data" / "gemma.toml").read_text()
    return tomllib.loads(text)


def test_the_family_is_there_and_nothing_invented():
    ids = {m.id for m in load_catalog().models}
    assert REQUIRED <= ids
    assert "gemma-3-8b" not in ids  # there is no Gemma 3 8B
    assert len(ids) == len(load_catalog().models)


def test_every_fact_has_a_source():
    for m in load_catalog().models:
        facts = {"modalities", "tunings", "license"}
        facts |= {"architecture"} if m.architecture_of is None else {"architecture_of"}
        if m.context_length is not None:
            facts.add("context_length")
        if m.raw_parameters is not None:
            facts |= {"raw_parameters", "effective_parameters"}
        assert facts <= set(m.sources), (m.id, facts - set(m.sources))
        for url in m.sources.values():
            assert url.startswith(("https://", "src/gemmakit/")), url
        for c in m.checkpoints:
            assert c.source.startswith("https://"), (m.id, c.repo)
            assert c.tuning in m.tunings, (m.id, c.repo)


def test_an_unknown_source_key_is_refused():
    doc = _doc()
    doc["models"][0]["sources"]["license"] = "nowhere"
    with pytest.raises(ConfigError, match="unknown source 'nowhere'"):
        parse(doc)


def test_sliding_window_layout():
    cat = load_catalog()
    # 5 local : 1 global from the first layer, cut at the layer count.
    kinds = cat.get("gemma-3-4b").architecture.layer_kinds()
    assert kinds[:6] == ["L"] * 5 + ["G"] and (kinds.count("L"), kinds.count("G")) == (29, 5)
    k27 = cat.get("gemma-3-27b").architecture.layer_kinds()
    assert (k27.count("L"), k27.count("G")) == (52, 10)
    assert cat.get("gemma-3-1b").architecture.sliding_window == 512
    assert cat.get("gemma-3-12b").architecture.sliding_window == 1024
    # Gemma 3n: 4 local : 1 global; only the first 20 layers hold a KV cache.
    e4b = cat.get("gemma-3n-e4b").architecture
    assert e4b.layer_kinds()[:5] == ["L"] * 4 + ["G"]
    assert len(e4b.kv_layer_kinds()) == 20


def test_computed_parameters_match_the_published_sizes():
    cat = load_catalog()
    nominal = {"gemma-3-270m": 0.27e9, "gemma-3-1b": 1e9, "gemma-3-4b": 4e9,
               "gemma-3-12b": 12e9, "gemma-3-27b": 27e9}
    for mid, n in nominal.items():
        got = parameter_count(cat.get(mid).architecture)
        assert abs(got / n - 1) < 0.08, (mid, got)
    # The bundled GGUF's tensors hold exactly this many elements (tests/integration checks it
    # against the file itself).
    assert parameter_count(cat.get("gemma-3-270m").architecture) == 268_098_176
    # The SigLIP encoder of the 4B/12B/27B is the report's "400M" one.
    a4 = cat.get("gemma-3-4b").architecture
    vision = parameter_count(a4) - parameter_count(a4, vision=False)
    assert 0.40e9 < vision < 0.43e9


def test_specialised_variants_reuse_the_architecture_they_are_built_on():
    cat = load_catalog()
    assert cat.get("functiongemma-270m").architecture == cat.get("gemma-3-270m").architecture
    assert cat.get("medgemma-27b-text").architecture.vision_encoder is None
    assert cat.get("shieldgemma-2-4b").purpose == "image-safety-classifier"
