"""The package's layers: the architecture page's table (docs/architecture.md) is the one the
import contracts in setup.cfg check, and those contracts catch an upward import, even one inside a
function."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def contract_layers() -> list[set[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    text = cfg["importlinter:contract:layers"]["layers"]
    return [{m.strip() for m in re.split(r"[|:]", line)} for line in text.strip().splitlines()]


def documented_layers() -> list[set[str]]:
    page = (REPO / "docs" / "architecture.md").read_text()
    section = page.split("# Architecture", 1)[1].split("\n## ", 1)[0]
    layers: dict[int, set[str]] = {}
    for number, module in re.findall(r"^\| (\d+) \| `([\w/]+)` \|", section, flags=re.M):
        layers.setdefault(int(number), set()).add(module.rstrip("/"))
    return [layers[n] for n in sorted(layers)]


def test_the_architecture_page_lists_the_checked_layers_and_every_module():
    assert documented_layers() == contract_layers()
    modules = {p.stem for p in (REPO / "fastres").glob("*.py") if p.stem != "__init__"}
    modules |= {p.name for p in (REPO / "fastres").iterdir() if (p / "__init__.py").exists()}
    assert set().union(*contract_layers()) == modules


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )


def test_import_contracts_hold_and_catch_an_upward_import_inside_a_function(tmp_path):
    shutil.copytree(
        REPO / "fastres", tmp_path / "fastres", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "setup.cfg", tmp_path / "setup.cfg")
    clean = _lint(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 broken" in clean.stdout

    # A low module reaching up to the training loop from inside a function, as helpers that
    # "live where they were first needed" do.
    with open(tmp_path / "fastres" / "files.py", "a") as f:
        f.write("\n\ndef _reach_up():\n    from .train import train\n\n    return train\n")
    broken = _lint(tmp_path)
    assert broken.returncode != 0
    assert "fastres.files is not allowed to import fastres.train" in broken.stdout
    assert "BROKEN" in broken.stdout
