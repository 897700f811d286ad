"""`gemmakit engines`"""

from __future__ import annotations

import argparse

HELP = "List the installed engines."


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(ns: argparse.Namespace) -> int:
    from gemmakit.engines import available

    for name, target in sorted(available().items()):
        print(f"{name}\t{target}")
    return 0
