"""`gemmakit`: one subcommand per module, listed in COMMANDS. A command module defines `HELP`,
`add_arguments(parser)` and `run(namespace) -> exit code`; heavy imports happen inside `run`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gemmakit import __version__
from gemmakit.errors import GemmakitError

COMMANDS: dict[str, str] = {
    "serve": "gemmakit.cli.serve",
    "chat": "gemmakit.cli.chat",
    "complete": "gemmakit.cli.complete",
    "models": "gemmakit.cli.models",
    "recommend": "gemmakit.cli.recommend",
    "pull": "gemmakit.cli.pull",
    "rm": "gemmakit.cli.rm",
    "quantize": "gemmakit.cli.quantize",
    "engines": "gemmakit.cli.engines",
    "batch": "gemmakit.cli.batch",
    "bench": "gemmakit.bench.cli",
    "top": "gemmakit.cli.top",
    "ps": "gemmakit.cli.ps",
    "eval": "gemmakit.cli.eval",
    "keys": "gemmakit.cli.keys",
    "usage": "gemmakit.cli.usage",
    "tiny-model": "gemmakit.cli.tiny_model",
    "finetune": "gemmakit.cli.finetune",
    "adapters": "gemmakit.cli.adapters",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gemmakit", description="Run Gemma models for real.")
    parser.add_argument("--version", action="version", version=f"gemmakit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return ns._run(ns)
    except GemmakitError as e:
        print(f"gemmakit: error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
