"""`gemmakit` — serve, chat, complete, models, bench, engines."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gemmakit import __version__
from gemmakit.cli.flags import add_model_flags, build, given
from gemmakit.errors import GemmakitError
from gemmakit.settings import Settings
from gemmakit.types import SamplingParams

_ENGINE_FLAGS = ("home", "model", "engine", "context_length", "threads", "batch_size", "log_level")
_SAMPLING_SKIP = ("n", "logprobs", "top_logprobs", "logit_bias")


def _settings_flags(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file (flags override it; it "
                   "overrides GEMMAKIT_* environment variables).")
    add_model_flags(p, Settings, only=only)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gemmakit", description="Run Gemma models for real.")
    parser.add_argument("--version", action="version", version=f"gemmakit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server.")
    _settings_flags(p)

    p = sub.add_parser("chat", help="Chat in the terminal (multi-turn; or one-shot with a "
                       "question).")
    p.add_argument("prompt", nargs="?", help="Ask once, print the answer and exit.")
    p.add_argument("--system", help="System prompt (folded into the first user turn, as Gemma "
                   "has no system role).")
    _settings_flags(p, _ENGINE_FLAGS)
    add_model_flags(p, SamplingParams, skip=_SAMPLING_SKIP)

    p = sub.add_parser("complete", help="Raw text completion (no chat format).")
    p.add_argument("prompt", help="Text to continue.")
    _settings_flags(p, _ENGINE_FLAGS)
    add_model_flags(p, SamplingParams, skip=_SAMPLING_SKIP)

    p = sub.add_parser("models", help="List the models available locally.")
    p.add_argument("--json", action="store_true", help="Machine-readable output.")
    _settings_flags(p, ("home", "log_level"))

    p = sub.add_parser("engines", help="List the installed engines.")

    p = sub.add_parser("bench", help="Benchmark gemmakit against bare llama-cpp-python.")
    from gemmakit.bench.single import add_arguments

    add_arguments(p)
    return parser


def _load_settings(ns: argparse.Namespace) -> Settings:
    settings = Settings.load(getattr(ns, "config", None), **given(ns, Settings))
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        if ns.command == "serve":
            from gemmakit.cli.serve import serve

            return serve(_load_settings(ns))
        if ns.command in ("chat", "complete"):
            from gemmakit.cli.chat import run_chat

            sampling = build(SamplingParams, ns)
            return run_chat(ns, _load_settings(ns), sampling)
        if ns.command == "models":
            from gemmakit.cli.models import list_models

            return list_models(_load_settings(ns), as_json=ns.json)
        if ns.command == "engines":
            from gemmakit.engines import available

            for name, target in sorted(available().items()):
                print(f"{name}\t{target}")
            return 0
        if ns.command == "bench":
            from gemmakit.bench.single import run

            return run(ns)
    except GemmakitError as e:
        print(f"gemmakit: error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
