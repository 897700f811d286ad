"""Schemathesis fuzzing of the server's own OpenAPI schema: every operation, positive and negative
(schema-violating) cases, counting responses >= 500.

The bounded run (300 cases) is part of the test suite (tests/integration/test_security.py). The
full campaign, from the repository root:

    python -m tests.integration.fuzz --cases 2000                     # the app, fake engine
    python -m tests.integration.fuzz --cases 2000 --engine llamacpp   # gemmakit serve, bundled model
    python -m tests.integration.fuzz --engine llamacpp --max-seconds 600  # a time budget instead

starts its own server (--auth, a content policy; with the bundled model a 256-token context, the
smallest llama.cpp allows, bounds every generation) and prints the number of cases and of
responses >= 500.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FuzzReport:
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)

    @property
    def n_server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)


def _strategy(op: Any, mode: Any, model: str | None) -> Any:
    """Cases for `op`; valid ones name the served model, so they get past the model check and
    reach validation, policy and generation (random names would almost all be 404s)."""
    from schemathesis import GenerationMode

    strategy = op.as_strategy(generation_mode=mode)
    if model is None or mode != GenerationMode.POSITIVE:
        return strategy

    def name_model(case: Any) -> Any:
        if isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model
        if case.path_parameters and "model_id" in case.path_parameters:
            case.path_parameters["model_id"] = model
        return case

    return strategy.map(name_model)


def run_fuzz(base_url: str, headers: dict[str, str], cases: int, seed: int = 0,
             max_seconds: float | None = None) -> FuzzReport:
    """Run about `cases` generated requests against `base_url` (rounds of hypothesis examples per
    operation and mode until the count is reached, or `max_seconds` have passed)."""
    import hypothesis
    import hypothesis.errors
    import requests
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    models = requests.get(f"{base_url}/v1/models", headers=headers, timeout=60).json()
    model = models["data"][0]["id"] if models.get("data") else None
    report = FuzzReport()
    session = requests.Session()
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    per = max(1, cases // (len(ops) * len(modes)))
    deadline = time.monotonic() + max_seconds if max_seconds else float("inf")
    round_no = 0
    while report.cases < cases and round_no < 50 and time.monotonic() < deadline:
        for op in ops:
            for mode in modes:
                budget = min(per, cases - report.cases)
                if budget <= 0:
                    break

                @hypothesis.seed(seed * 1000 + round_no)
                @hypothesis.settings(max_examples=budget, deadline=None, database=None,
                                     phases=[hypothesis.Phase.generate],
                                     suppress_health_check=list(hypothesis.HealthCheck))
                @hypothesis.given(case=_strategy(op, mode, model))
                def one(case: Any) -> None:  # run at once, in this iteration
                    if time.monotonic() >= deadline:
                        return
                    try:
                        r = case.call(base_url=base_url, session=session, headers=headers,
                                      timeout=300)
                        status = r.status_code
                    except requests.RequestException as e:  # the server dropped the connection
                        status, r = 599, None
                        report.server_errors.append(f"{op.label}: {type(e).__name__}")  # noqa: B023
                    report.cases += 1
                    report.statuses[status] += 1
                    if status >= 500 and r is not None:
                        report.server_errors.append(  # noqa: B023 (one() runs in this iteration)
                            f"{op.label} -> {status}: {r.text[:200]}")  # noqa: B023

                try:
                    one()
                except hypothesis.errors.Unsatisfiable:
                    pass  # e.g. no invalid input exists for an operation without parameters
        round_no += 1
    session.close()
    return report


@contextlib.contextmanager
def fuzz_target(tmp: Path, engine: str = "fake") -> Iterator[tuple[str, dict[str, str]]]:
    """A server to fuzz, with --auth, the policy below and an unlimited key; yields its base URL
    and auth headers. engine="fake": the real app on uvicorn in a thread, served by the fake
    engine (milliseconds a case); "llamacpp": `gemmakit serve` with the bundled model."""
    from gemmakit.safety.auth import KeyStore

    home = tmp / "fuzz-home"
    store = KeyStore(home)
    _, secret = store.create("fuzz")
    store.close()
    cfg = tmp / "fuzz.toml"
    cfg.write_text(POLICY_TOML)
    headers = {"Authorization": f"Bearer {secret}"}
    if engine == "llamacpp":
        from gemmakit.catalog.bundled import ensure_bundled
        from gemmakit.settings import default_home
        from tests.integration.conftest import start_server, stop_server

        models = Path(os.environ.get("GEMMAKIT_TEST_HOME") or default_home()) / "models"
        model = ensure_bundled(models, progress=False)
        # 256 tokens is llama.cpp's smallest context: it bounds every generation.
        server = start_server(home, tmp, "--model", str(model), "--auth", "--context-length",
                              "256", "--config", str(cfg))
        try:
            yield server.base_url, headers
        finally:
            stop_server(server)
        return
    from gemmakit.server.app import create_app
    from gemmakit.settings import Settings
    from tests.conftest import FakeEngine, uvicorn_thread

    settings = Settings.load(cfg, home=home, auth=True)
    fake = FakeEngine()
    with uvicorn_thread(create_app("gemma-test", lambda: fake, settings)) as base_url:
        yield base_url, headers


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - the manual campaign
    import tempfile

    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=("fake", "llamacpp"), default="fake")
    p.add_argument("--max-seconds", type=float, help="Stop after this long (report what ran).")
    ns = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        with fuzz_target(Path(tmp), ns.engine) as (base_url, headers):
            report = run_fuzz(base_url, headers, ns.cases, ns.seed, ns.max_seconds)
    print(json.dumps({"engine": ns.engine, "cases": report.cases,
                      "responses_5xx": report.n_server_errors,
                      "statuses": dict(sorted(report.statuses.items())),
                      "server_errors": report.server_errors[:20]}, indent=2))
    return 0 if report.n_server_errors == 0 else 1


POLICY_TOML = """
[[policy.rules]]
name = "email"
detector = "email"
action = "mask"

[[policy.rules]]
name = "card"
detector = "payment_card"
action = "mask"

[[policy.rules]]
name = "forbidden-topic"
keywords = ["forbidden topic"]
action = "block"
apply_to = ["input"]

[[policy.rules]]
name = "the"
pattern = "\\\\bthe\\\\b"
action = "mask"
apply_to = ["output"]
"""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
