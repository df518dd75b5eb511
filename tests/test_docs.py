"""The docs cannot drift from the CLI: every `fastres ...` command line in README.md and
docs/*.md parses with the `fastres` parser as written (an option that does not exist, or a
value it refuses, fails here), a training command resolves to a valid config, and every
relative link in the docs reaches a file and, where it names one, a heading.

Parse-only and in process, so the whole file takes seconds: nothing trains, nothing is read
from disk but the docs (and a recorded config.json a command names, when it exists). History
pages (docs/history/) and the study records (docs/*/README.md) keep the commands of their day
and are excepted from the command check, not from the link check."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fastres import cli
from fastres.cli.ablate import parse_variants
from fastres.cli.options import config_from_args
from fastres.presets import get_preset

from .conftest import REPO

COMMAND_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK_PAGES = [*COMMAND_PAGES, REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*/*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
STOP = {">", ">>", "|", "||", "&&", ";", "&", "2>&1"}


def _fastres_argv(tokens: list[str]) -> list[str] | None:
    """The arguments after `fastres` (also .venv/bin/fastres, python -m fastres, torchrun -m
    fastres) up to the first shell operator, or None when the line does not run fastres."""
    for i, token in enumerate(tokens):
        if token in STOP:
            return None
        if Path(token).name == "train.sh":  # scripts/train.sh passes its arguments to fastres train
            rest = tokens[i + 1 :]
            return ["train", *rest[: next((j for j, t in enumerate(rest) if t in STOP), len(rest))]]
        if Path(token).name == "fastres" and (
            i == 0
            or tokens[i - 1] == "-m"
            or "/" in token
            or "=" in tokens[i - 1]
            or tokens[i - 1] in STOP
        ):
            rest = tokens[i + 1 :]
            end = next((j for j, t in enumerate(rest) if t in STOP), len(rest))
            return rest[:end]
    return None


def documented_commands(page: Path) -> list[tuple[str, list[str]]]:
    """(where, argv) of every fastres command line in a page's shell code blocks, and of every
    inline `fastres SUBCOMMAND ARG...` span that is a whole command (no "..." in it); a
    `bash scripts/train.sh ARGS` counts as `fastres train ARGS`."""
    found, fence, pending = [], None, ""
    lines = page.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        where = f"{page.relative_to(REPO)}:{number}"
        if line.lstrip().startswith("```"):
            fence = line.strip()[3:].strip() if fence is None else None
            continue
        if fence is not None:
            if fence not in SHELL_FENCES:
                continue
            text = pending + line
            if text.rstrip().endswith("\\"):
                pending = text.rstrip()[:-1] + " "
                continue
            pending = ""
            if "fastres" not in text:
                continue
            argv = _fastres_argv(shlex.split(text, comments=True))
            if argv is not None:
                found.append((where, argv))
            continue
        for span in re.findall(
            r"`((?:\.venv/bin/)?fastres [^`]+|bash scripts/train\.sh [^`]+)`", line
        ):
            argv = _fastres_argv(shlex.split(span))
            if "..." in span or argv is None or len(argv) < 2 or argv[0].startswith("-"):
                continue
            found.append((where, argv))
    return found


COMMANDS = [command for page in COMMAND_PAGES for command in documented_commands(page)]


def test_the_docs_show_commands_of_every_subcommand():
    subcommands = {argv[0] for _, argv in COMMANDS if argv}
    assert {"prepare-data", "train", "eval", "ablate", "report", "bench"} <= subcommands, (
        subcommands
    )
    assert len(COMMANDS) > 40


def _subparser(name: str):
    actions = cli.build_parser()._subparsers._group_actions  # noqa: SLF001  (argparse keeps them there)
    return actions[0].choices[name]


def check_command(argv: list[str]) -> None:
    """Parse as `fastres` would, then what the command would resolve before doing any work.
    A span such as `fastres ablate --variant` names an option in prose: that option must exist."""
    if (
        len(argv) >= 2
        and argv[0] in cli.COMMANDS
        and argv[-1].startswith("--")
        and "=" not in argv[-1]
    ):
        action = _subparser(argv[0])._option_string_actions.get(argv[-1])  # noqa: SLF001
        assert action is not None, f"fastres {shlex.join(argv)}: no option {argv[-1]}"
        if action.nargs != 0:
            argv = argv[:-1]
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0 and "--help" in argv:  # `fastres train --help` is a documented command
            return
        raise AssertionError(
            f"fastres {shlex.join(argv)}: the parser refuses it (exit {exc.code})"
        ) from None
    if (
        args.command == "train"
        and not args.resume
        and (not args.config or Path(REPO / args.config).exists())
    ):
        if args.config:
            args.config = str(REPO / args.config)
        config_from_args(args)  # the preset exists and the options make a valid config
    if args.command == "ablate":
        for name in args.config or []:
            get_preset(name)
        if args.variant:
            parse_variants(args.variant)  # each variant's options are fastres train's


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_documented_command_runs_as_written(where, argv, capsys):
    check_command(argv)


def test_a_documented_option_that_does_not_exist_fails(capsys):
    with pytest.raises(AssertionError, match="refuses"):
        check_command(["train", "--preset", "quick", "--no-such-option", "3"])
    with pytest.raises(Exception, match="unknown preset"):
        check_command(["train", "--preset", "quickest"])
    with pytest.raises(Exception, match="no-such"):
        check_command(["ablate", "--config", "quick", "--variant", 'x:"--no-such 1"'])


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    fence = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        if fence or not line.startswith("#"):
            continue
        slug = github_anchor(line.lstrip("#"))
        result.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return result


@pytest.mark.parametrize("page", LINK_PAGES, ids=[str(p.relative_to(REPO)) for p in LINK_PAGES])
def test_every_relative_link_reaches_its_file_and_heading(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, broken
