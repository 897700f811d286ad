"""`gemmakit models --catalog [--json]` lists the catalog; `gemmakit models` keeps listing local
files."""

from __future__ import annotations

import json

from gemmakit.catalog.data import load_catalog, model_json

REQUIRED = {"gemma-3-270m", "gemma-3-1b", "gemma-3-4b", "gemma-3-12b", "gemma-3-27b",
            "gemma-3n-e2b", "gemma-3n-e4b"}


def test_models_catalog_json_lists_it(capsys):
    from gemmakit.cli.main import main

    assert main(["models", "--catalog", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and {r["id"] for r in rows} >= REQUIRED
    for r in rows:
        assert r["id"] and r["modalities"] and r["source"].startswith("https://")
    e2b = next(r for r in rows if r["id"] == "gemma-3n-e2b")
    assert "audio" in e2b["modalities"] and e2b["architecture"]["kv_layers"] == 20
    assert model_json(load_catalog().get("gemma-3-4b"))["parameters_computed"] is True


def test_models_catalog_table(capsys):
    from gemmakit.cli.main import main

    assert main(["models", "--catalog"]) == 0
    out = capsys.readouterr().out
    assert "gemma-3-27b" in out and "gemma-3n-e4b" in out
