"""The pydantic corpus (tests/data/pydantic_schemas.json, written from tests/data/pydantic_models.py):
every schema is accepted, compiles with and without a budget, and every text its budgeted grammar
accepts validates — against the schema with jsonschema, and as the pydantic model itself."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from gemmakit.tools.constraints import compile_schema
from gemmakit.tools.schema import check_schema, validate_value
from tests.data.pydantic_models import MODELS, corpus
from tests.unit.tools.grammars import walk

CORPUS = Path(__file__).parents[2] / "data" / "pydantic_schemas.json"
ITEMS = json.loads(CORPUS.read_text("utf-8"))
BY_NAME = {m.__name__: m for m in MODELS}
STRICTER_THAN_SCHEMA = {"Order"}
"""Models pydantic validates more strictly than their schema says: Decimal's schema takes any
string, its validator only numeric ones."""


def test_the_corpus_file_is_up_to_date():
    assert ITEMS == json.loads(json.dumps(corpus(), ensure_ascii=False)), (
        "regenerate: python -m tests.data.pydantic_models > tests/data/pydantic_schemas.json")
    assert len(ITEMS) >= 30


def test_every_schema_is_accepted_and_few_need_a_check_after_generation():
    post = {}
    for it in ITEMS:
        plan = check_schema(it["schema"])
        if plan.post_checked:
            post[it["name"]] = plan.post_checked
    # set[str] (uniqueItems), multiple_of, timedelta (duration), IPv4Address (ipv4), HttpUrl (uri)
    assert set(post) == {"Task", "Transaction", "Workout", "NetworkDevice", "UserProfile"}


@pytest.mark.parametrize("item", ITEMS, ids=[i["name"] for i in ITEMS])
def test_every_text_the_budgeted_grammar_accepts_is_valid(item):
    schema = item["schema"]
    compile_schema(schema)  # parse-checked by llama.cpp without a budget too
    g = compile_schema(schema, max_tokens=256)
    if check_schema(schema).post_checked:
        return  # those keywords are checked after generation, not promised by the grammar
    model = BY_NAME[item["name"]]
    rng = random.Random(item["name"])
    for k in range(12):
        text, cost = walk(g.text, rng, longest=k % 3 == 0)
        assert cost <= 255
        value = json.loads(text)
        assert validate_value(schema, value) is None, (text, validate_value(schema, value))
        if item["name"] not in STRICTER_THAN_SCHEMA:
            model.model_validate(value)
