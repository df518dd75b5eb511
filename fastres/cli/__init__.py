"""The ``fastres`` command: a thin layer over the Python API. Each subcommand's module reads
its options, calls the API and prints what it returns (setup.cfg's ``fastres.cli`` contract).

Every ``TrainConfig`` field is a ``fastres train`` option (``--field-name``), generated from
the dataclass so the two can never drift apart.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from ..errors import FastresError
from .ablate import cmd_ablate
from .bench import cmd_bench
from .output import reader_gone
from .parser import build_parser
from .report import cmd_report
from .runs import cmd_eval, cmd_prepare, cmd_train

COMMANDS = {
    "prepare-data": cmd_prepare,
    "train": cmd_train,
    "eval": cmd_eval,
    "bench": cmd_bench,
    "ablate": cmd_ablate,
    "report": cmd_report,
}

__all__ = ["COMMANDS", "build_parser", "main"]

# What str.splitlines() breaks on: a path or name holding one would split the error in two.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _one_line(text: str) -> str:
    """``text`` with every line break escaped, so an error stays the one line it is."""
    return "".join(repr(c)[1:-1] if c in _LINE_BREAKS else c for c in text)


def main(argv: Sequence[str] | None = None) -> int:
    code = _run(argv)
    # A command stopped because its reader went away (`| head`) exits as SIGPIPE would.
    return 141 if reader_gone() else code


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except FastresError as exc:
        if args.debug:
            traceback.print_exc()
        # One write with its newline, so that the lines of several failing torchrun ranks
        # never run into each other (unbuffered, print() writes the newline apart).
        sys.stderr.write(f"fastres: error: {_one_line(str(exc))}\n")
        sys.stderr.flush()
        return exc.exit_code
    except KeyboardInterrupt:
        why = "stopped: the output's reader went away" if reader_gone() else "interrupted"
        print(f"fastres: {why}", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:  # an OSError, so caught first: a print outside `output.log`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.filename is None or args.debug:
            raise
        # A path the OS refused where no check foresaw it (a name too long, a loop of links).
        sys.stderr.write(
            _one_line(f"fastres: error: cannot use {exc.filename}: {exc.strerror or exc}; ")
            + "pass a path this system accepts\n"
        )
        return 1
