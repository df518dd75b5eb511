"""Runs grouped into settings (everything but the seed: a preset, or a variant of one, with its
recipe), in the ablation table's order, and the setting the others are compared with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..config import TrainConfig
from ..errors import FastresError
from ..formatting import compact
from ..presets import PRESETS
from .runs import Run, setting


@dataclass
class Group:
    preset: str
    label: str
    recipe: dict[str, Any]
    config: TrainConfig  # of its first run: the setting's recipe
    runs: list[Run] = field(default_factory=list)
    # The folder its runs share (OUT/<name>/seed<S>), e.g. an ablate --variant's name.
    name: str = ""

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.complete]

    @property
    def unfinished(self) -> list[Run]:
        return [r for r in self.runs if not r.complete]


def group_runs(
    runs: list[Run], variants: frozenset[str] = frozenset(), apart: frozenset[str] = frozenset()
) -> list[Group]:
    """One group per (preset, recipe without the seed), in the ablation table's order; a group
    living in the folder of one of the study's ``variants`` is labelled with its name. Runs in
    the folder of a variant in ``apart`` (``machine_variants``) form a group of their own."""
    groups: dict[tuple[str, str, str], Group] = {}
    for run in runs:
        recipe = setting(run)
        key = (
            run.config.preset,
            json.dumps(recipe, sort_keys=True),
            run.folder if run.folder in apart else "",
        )
        if key not in groups:
            label = run.config.preset or "custom"
            groups[key] = Group(run.config.preset, label, recipe, run.config)
        groups[key].runs.append(run)
    result = list(groups.values())
    for g in result:
        shared = {r.folder for r in g.runs if r.folder}
        folder = shared.pop() if len(shared) == 1 else ""
        g.name = folder if folder in variants or folder == g.preset else ""
        if g.name in variants:  # a named variant: its name says which setting it is
            g.label = g.name
    _tell_apart(result)
    order = list(PRESETS)
    # A preset's own runs come before its variants (they are the variants' reference).
    result.sort(
        key=lambda g: (
            order.index(g.preset) if g.preset in order else len(order),
            g.label != (g.preset or "custom") and not g.label.startswith(f"{g.preset} ("),
            g.label,
        )
    )
    return result


def _tell_apart(groups: list[Group]) -> None:
    """Settings that would share a label (a preset's name, or a variant's name that two studies
    gave different options) get the fields that tell them apart in it."""
    for label in {g.label for g in groups}:
        same = [g for g in groups if g.label == label]
        if len(same) > 1:
            varying = [
                k for k in same[0].recipe if len({json.dumps(g.recipe[k]) for g in same}) > 1
            ]
            for g in same:
                g.label = f"{label} ({', '.join(f'{k}={compact(g.recipe[k])}' for k in varying)})"


def find_reference(groups: list[Group], reference: str | None) -> Group | None:
    """The setting the others are compared with: the one named ``reference`` (a variant's or
    preset's name, or a label), else ``baseline`` when the runs include it."""
    if reference is None:
        named = [g for g in groups if g.preset == "baseline" and g.done]
        return next((g for g in named if g.name in ("", "baseline")), named[0] if named else None)
    for g in groups:
        if reference in (g.name, g.label) or (g.preset == reference and g.name in ("", reference)):
            return g
    names = ", ".join(dict.fromkeys(g.name or g.label for g in groups))
    raise FastresError(
        f"no setting named {reference!r} among the runs: pass --reference with one of {names}"
    )
