"""`gemmakit bench`"""

from __future__ import annotations

from gemmakit.bench.measure import add_arguments, run

HELP = "Benchmark gemmakit against bare llama-cpp-python (JSON with --json)."

__all__ = ["HELP", "add_arguments", "run"]
