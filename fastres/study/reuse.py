"""``--reuse``: the finished runs of earlier studies, found by recipe and seed, so a study
counts them instead of training them again."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..config import TrainConfig, describe_differences, recipe_differences
from ..errors import FastresError
from ..record import EditedRun, read_config
from ..rundir import RunDir, find_runs


class EarlierRuns:
    """The finished runs (completed or diverged) at or below earlier studies' folders
    (``--reuse``), found by recipe and seed: a run is the same run whatever its study named it."""

    def __init__(self, folders: Sequence[str | Path] = (), out: Path | None = None) -> None:
        self.folders = [Path(f) for f in folders]
        for folder in self.folders:
            if not folder.is_dir():
                what = "is a file, not a folder" if folder.exists() else "no such folder"
                raise FastresError(
                    f"--reuse {folder}: {what}; pass the --out folder of an earlier study"
                )
            if out is not None and folder.resolve() == out.resolve():
                raise FastresError(
                    f"--reuse {folder} is this study's own --out: its finished runs are skipped "
                    "anyway; pass an earlier study's folder"
                )
        self._by_recipe: dict[str, list[Path]] = {}
        self._edited: dict[Path, str] = {}  # finished runs whose config.json was edited since
        for folder in self.folders:
            for rd in find_runs(folder):
                try:
                    if rd.state() in ("completed", "diverged"):
                        key = _recipe_key(read_config(rd))
                        self._by_recipe.setdefault(key, []).append(rd.path)
                except EditedRun as exc:
                    self._edited[rd.path] = str(exc).split(":")[0]
                except FastresError:  # not a run this fastres can read: not one to reuse
                    continue

    def find(self, config: TrainConfig, setting: str) -> tuple[Path | None, str]:
        """The run directory of a finished run with ``config``'s recipe and seed (one in a
        folder named like ``setting`` first, then the first folder's), else None and why the
        run of that name found there, if any, was not taken."""
        paths = self._by_recipe.get(_recipe_key(config), [])
        name = (setting, f"seed{config.seed}")
        if paths:
            return next((p for p in paths if p.parts[-2:] == name), paths[0]), ""
        why = []
        for folder in self.folders:
            candidate = RunDir(folder.joinpath(*name))
            state = candidate.state()
            if candidate.path in self._edited:
                why.append(self._edited[candidate.path])
            elif state in ("completed", "diverged"):
                diffs = recipe_differences(TrainConfig.from_dict(candidate.read_config()), config)
                why.append(
                    f"{candidate.path} has another recipe: {describe_differences(diffs, 'planned')}"
                )
            elif state != "new":
                why.append(f"{candidate.path} is {state}")
        return None, "; ".join(why)


def _recipe_key(config: TrainConfig) -> str:
    return json.dumps(config.recipe(), sort_keys=True, default=list)
