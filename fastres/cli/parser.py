"""The ``fastres`` parser: the root options and one subparser per command, each added by
its command's module."""

from __future__ import annotations

import argparse

from . import ablate, bench, report, runs
from .options import Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fastres", description="Fast, reproducible CIFAR-10 ResNet training and ablations."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    runs.add_parsers(sub)
    ablate.add_parser(sub)
    report.add_parser(sub)
    bench.add_parser(sub)
    return parser
