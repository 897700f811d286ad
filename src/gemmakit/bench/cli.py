"""`gemmakit bench`"""

from __future__ import annotations

from gemmakit.bench.measure import add_arguments, run

HELP = ("Benchmark gemmakit: against bare llama-cpp-python, under concurrent load, or side by "
        "side with other OpenAI-compatible servers (JSON with --json).")

__all__ = ["HELP", "add_arguments", "run"]
