"""Fixtures for fine-tuning: the bundled 270M's dense folder (the transformers fixtures) and the
training data under tests/data/finetune."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.transformers.conftest import dense_270m, hf_engine  # noqa: F401

DATA = Path(__file__).resolve().parents[2] / "data" / "finetune"


@pytest.fixture(scope="session")
def ft_data() -> Path:
    return DATA


TRAIN_ARGS = ["--max-steps", "8", "--batch-size", "2", "--learning-rate", "1e-3",
              "--eval-every", "4", "--save-every", "4", "--seed", "3", "--threads", "2"]
"""The short run every fine-tuning test shares (a few dozen seconds on the bundled 270M)."""


@pytest.fixture(scope="session")
def trained(gemmakit_home: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """An adapter trained by the real command on the bundled model: its --json report."""
    request.getfixturevalue("dense_270m")  # converted once, by the transformers fixtures
    import contextlib
    import io
    import json

    from gemmakit.cli.main import main
    from gemmakit.finetune import store

    name = f"capitals-{uuid.uuid4().hex[:6]}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["finetune", str(DATA / "capitals.jsonl"), "--name", name, "--eval",
                   str(DATA / "capitals_eval.jsonl"), "--json", "--no-progress",
                   "--home", str(gemmakit_home), *TRAIN_ARGS])
    assert rc == 0
    yield json.loads(out.getvalue())
    if store.find(gemmakit_home, name) is not None:
        store.remove(gemmakit_home, name)
