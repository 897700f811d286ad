"""Write the CLI reference (docs/cli.md) from the parser itself, so it cannot drift:
`python -m gemmakit.cli.docs > docs/cli.md`; a test fails when the checked-in file differs."""

from __future__ import annotations

import argparse
import os

from gemmakit.cli.main import build_parser


def render() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal width
    parser = build_parser()
    out = ["# gemmakit command line", "",
           "Generated from the argument parser by `python -m gemmakit.cli.docs`; do not edit.", "",
           "```", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        out += [f"## gemmakit {name}", "", "```", p.format_help().rstrip(), "```", ""]
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        for action in nested:  # e.g. gemmakit keys create|list|revoke|rotate
            for sub_name, sp in action.choices.items():
                out += [f"### gemmakit {name} {sub_name}", "", "```",
                        sp.format_help().rstrip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
