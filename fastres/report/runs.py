"""The runs a report counts: run directories below the folders reported (through
``fastres.rundir`` only), several folders taken as one study, and what each study's
``study.json`` says about its settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import record
from ..config import MACHINE_FIELDS, TrainConfig
from ..errors import FastresError
from ..rundir import STUDY, STUDY_ROOT, RunDir, find_runs, read_study, reused_runs

# Recipe fields that do not make two runs different settings.
_NOT_SETTING = {"seed"}


@dataclass
class Run:
    path: Path
    rel: str
    config: TrainConfig
    state: str
    summary: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    # The first folder of its path inside the folder reported (a study's setting folder).
    folder: str = ""
    # Runs of the same setting and seed in later folders: not counted, but their times may
    # pair with the runs they ran next to (a later study that ran the reference again beside
    # a variant).
    twins: list[Run] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.state == "completed"


def setting(run: Run) -> dict[str, Any]:
    """A run's recipe without what does not make it a different setting (its seed)."""
    return {k: v for k, v in run.config.recipe().items() if k not in _NOT_SETTING}


def folders(roots: str | Path | Sequence[str | Path]) -> list[Path]:
    """The folders reported: one, or several taken as one study."""
    return [Path(roots)] if isinstance(roots, str | Path) else [Path(r) for r in roots]


def load_runs(
    root: str | Path, skipped: list[dict[str, str]] | None = None, prefix: str = ""
) -> list[Run]:
    """The runs below ``root`` (named by their path inside it, after ``prefix``), and those of
    earlier studies that the study in ``root`` reused (``fastres ablate --reuse``: named by their
    path from ``root``) unless ``root`` has its own run of that setting and seed; a folder whose
    config.json this fastres cannot read (a stray file, or a run written by a newer fastres) is
    left out, and named in ``skipped``."""
    root = Path(root)
    if not root.is_dir():
        raise FastresError(
            f"{root} is not a folder: pass the --out folder of an ablation (default {STUDY_ROOT})"
        )
    runs = []
    unread: list[dict[str, str]] = []
    for rd, inside, name, reused in _found(root):
        # Through several folders, a reused run is named by its own path: runs/a/../b/x is
        # runs/b/x.
        name = (
            os.path.normpath(prefix + name) if prefix and name.startswith("..") else prefix + name
        )
        try:
            config = record.read_config(rd)
            state = rd.state()
            summary = rd.read_summary() if rd.summary.exists() else None
        except FastresError as exc:
            reason = f"reused by this study as {inside}, but {exc}" if reused else str(exc)
            unread.append({"run": name, "reason": reason})
            if skipped is not None:
                skipped.append(unread[-1])
            continue
        runs.append(
            Run(
                rd.path,
                name,
                config,
                state,
                summary,
                rd.read_metrics(),
                folder=inside.split("/")[0] if "/" in inside else "",
            )
        )
    if not runs and unread:
        more = f" (and {len(unread) - 1} more)" if len(unread) > 1 else ""
        raise FastresError(
            f"{root} holds no fastres run this fastres can count: "
            f"{unread[0]['run']}: {unread[0]['reason']}{more}"
        )
    if not runs:
        raise FastresError(
            f"{root} holds no fastres runs (no run directories with a config.json "
            f"below it): pass the --out folder of an ablation, e.g. fastres report "
            f"{STUDY_ROOT}"
        )
    return runs


def _found(root: Path) -> list[tuple[RunDir, str, str, bool]]:
    """(run directory, its path as a study's run inside root, the name the report gives it,
    reused): root's own runs, then the reused runs of settings and seeds it has none of."""
    found = [
        (rd, inside, inside, False)
        for rd in find_runs(root)
        for inside in [str(rd.path.relative_to(root)) if rd.path != root else "."]
    ]
    own = {inside for _, inside, _, _ in found}
    found += [
        (RunDir(path), f"{name}/seed{seed}", os.path.relpath(path, root), True)
        for name, seed, path in reused_runs(root)
        if f"{name}/seed{seed}" not in own
    ]
    return found


def load_studies(roots: list[Path], skipped: list[dict[str, str]]) -> list[Run]:
    """The runs of one folder, or of several as one study: named ``<folder>/<path inside it>``,
    and a run of the same setting and seed as one in an earlier folder counted once (the
    others go to ``skipped``, naming the run counted)."""
    if len(roots) == 1:
        return load_runs(roots[0], skipped)
    runs: list[Run] = []
    counted: dict[tuple[str, str, int], Run] = {}
    seen: set[Path] = set()
    for root in roots:
        for run in load_runs(root, skipped, prefix=f"{root}/"):
            # One run reached twice (a study that reused it, and its own folder).
            if run.path.resolve() in seen:
                continue
            seen.add(run.path.resolve())
            key = (run.config.preset, json.dumps(setting(run), sort_keys=True), run.config.seed)
            first = counted.get(key)
            if first is None:
                counted[key] = run
                runs.append(run)
                continue
            if run.complete and not first.complete:  # a finished run counts before an unfinished
                runs[runs.index(first)] = counted[key] = run
                run.twins, first.twins = [first, *first.twins], []
                first, run = run, first
            else:
                first.twins.append(run)
            skipped.append(
                {
                    "run": run.rel,
                    "reason": f"the same setting and seed as {first.rel}, counted once"
                    " (its time still pairs with the runs beside it)",
                }
            )
    return runs


def _studies(roots: Sequence[str | Path]) -> Iterator[dict[str, Any]]:
    """The readable ``study.json`` of each of ``roots`` that has one, in order: a folder of
    plain runs, or a study.json this fastres cannot read, says nothing about settings."""
    for root in roots:
        if not (Path(root) / STUDY).exists():
            continue
        try:
            yield read_study(root)
        except FastresError:
            continue


def study_variants(*roots: str | Path) -> frozenset[str]:
    """The names of the variants the ``fastres ablate`` studies in ``roots`` ran (none
    elsewhere)."""
    return frozenset(name for study in _studies(roots) for name in study.get("variants", {}))


def study_reference(*roots: str | Path) -> str | None:
    """The setting a study of ``--variant``s compares with when no --reference is named: its
    varied preset, as the report that ``fastres ablate`` writes at the end does."""
    for study in _studies(roots):
        if study.get("variants") and study.get("presets"):
            return str(study["presets"][0])
    return None


def machine_variants(*roots: str | Path) -> frozenset[str]:
    """The variants of the studies in ``roots`` that change only machine fields (``--compile
    on``, ``--threads 1``): their recipe is their preset's, so only their folder sets them apart."""
    return frozenset(
        name
        for study in _studies(roots)
        for name, options in study.get("variants", {}).items()
        if options and set(options) <= MACHINE_FIELDS
    )


def study_rules(*roots: str | Path) -> dict[str, str]:
    """How the ``fastres ablate --base`` studies in ``roots`` chose a setting's learning rate:
    setting -> the rule's text (none elsewhere)."""
    rules: dict[str, str] = {}
    for study in _studies(roots):
        rules |= dict(study.get("rules", {}))
    return rules
