"""The original study's settings on any base recipe: each is the base plus exactly its change
(``fastres ablate --base``), with a stated rule where the change needs one.

A setting's change is read from the ablation table (``presets.ABLATIONS``: the fields its preset
changes from ``baseline``); the learning rate that goes with it follows a rule instead of the
table's number, because the table's numbers were chosen for ``baseline``'s lr 0.1 and batch 128.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig, load_config_file
from ..errors import ConfigError
from ..formatting import compact
from ..presets import ABLATIONS, ALIASES, PRESETS, get_preset, preset_differences

SETTINGS: tuple[str, ...] = tuple(name for name in ABLATIONS if name != "baseline")
# The largest lr measured to train without BatchNorm, per base preset: on `quick` a sweep
# (docs/ablations.md, "The rules") found where training stops learning; elsewhere the original
# study's lr without BatchNorm, the only one measured at full width.
NO_BN_MAX_LR: dict[str, float] = {"quick": 0.4}
NO_BN_DEFAULT_MAX_LR = ABLATIONS["no_batchnorm"][1].lr


def no_bn_max_lr(preset: str) -> float:
    """The cap on a no-BatchNorm run's lr for a base of this preset (``NO_BN_MAX_LR``)."""
    return NO_BN_MAX_LR.get(preset, NO_BN_DEFAULT_MAX_LR)


RULES = {
    "small_batch": (
        "every learning rate of the base (lr, and muon_lr with Muon) scaled linearly with the "
        "batch size (Goyal et al. 2017), so each image moves the weights as far as in the base"
    ),
    "no_batchnorm": (
        "the base's lr, capped at the largest lr measured to train without BatchNorm "
        f"({', '.join(f'{k} {v:g}' for k, v in NO_BN_MAX_LR.items())}; other bases "
        f"{NO_BN_DEFAULT_MAX_LR:g}, the original study's); Muon's muon_lr is kept"
    ),
}


@dataclass(frozen=True)
class Base:
    """A study's base recipe: the preset its runs start from, and the fields set on top of it."""

    preset: str
    config: TrainConfig  # the preset with ``changes`` and the study's overrides applied
    changes: dict[str, Any] = field(default_factory=dict)  # from a config file: its recipe's fields
    source: str = ""  # what --base named


def resolve_base(text: str, overrides: Mapping[str, Any] | None = None) -> Base:
    """``--base``: a preset (or alias), or a config file (a run's config.json or run directory),
    whose recipe becomes its preset plus the fields that differ; ``overrides`` then apply."""
    overrides = dict(overrides or {})
    key = ALIASES.get(text, text)
    if key in PRESETS:
        preset, changes = key, {}
    elif Path(text).exists():
        try:
            recorded = load_config_file(text)
        except ConfigError as exc:
            raise ConfigError(f"--base {text}: {exc}") from None
        preset = recorded.preset if recorded.preset in PRESETS else "baseline"
        # The recipe only: the seeds are the study's, and the machine is this one.
        mine, theirs = recorded.recipe(), PRESETS[preset].recipe()
        changes = {k: v for k, v in mine.items() if k != "seed" and theirs[k] != v}
    else:
        raise ConfigError(
            f"--base {text!r} is neither a preset ({', '.join(PRESETS)}) nor a config file: pass a "
            "preset name or a run's config.json (or run directory)"
        )
    config = get_preset(preset).replace(**{**changes, **overrides})
    return Base(preset, config, changes, text)


def choose_settings(names: Sequence[str]) -> list[str]:
    """The settings named (aliases resolved, ``baseline`` = the base itself, left out), in the
    table's order; a name that is not a setting of the study is a ConfigError."""
    chosen = []
    for name in names:
        key = ALIASES.get(name, name)
        if key == "baseline":
            continue
        if key not in SETTINGS:
            raise ConfigError(
                f"{name!r} is not a setting of the original study: with --base, --config names "
                f"settings to run on the base ({', '.join(SETTINGS)}), or pass --all"
            )
        chosen.append(key)
    return [s for s in SETTINGS if s in chosen]


def setting_changes(name: str, base: TrainConfig, base_name: str = "this base") -> dict[str, Any]:
    """The fields ``name`` sets on ``base``: its change from the table, with the rule's lr.
    A ConfigError when the change is no change on this base (e.g. no_batchnorm without
    BatchNorm)."""
    if name not in SETTINGS:
        raise ConfigError(f"unknown setting {name!r}: choose from {', '.join(SETTINGS)}")
    change = {k: new for k, (_, new) in preset_differences(name).items() if k != "lr"}
    if all(getattr(base, k) == v for k, v in change.items()):
        what = ", ".join(f"{k} is already {compact(v)}" for k, v in change.items())
        raise ConfigError(
            f"setting {name} cannot apply to {base_name}: its {what}; leave it out (name the "
            "settings to run with --config, e.g. --config "
            f"{' '.join(s for s in SETTINGS if s != name)})"
        )
    if name == "small_batch":
        factor = change["batch_size"] / base.batch_size
        change["lr"] = base.lr * factor
        if base.optimizer == "muon":
            change["muon_lr"] = base.muon_lr * factor
    elif name == "no_batchnorm":
        change["lr"] = min(base.lr, no_bn_max_lr(base.preset))
    return change


def study_variants(
    base: TrainConfig, settings: Sequence[str], base_name: str = "this base"
) -> dict[str, dict[str, Any]]:
    """Each setting as a named variant of ``base`` (``ablate --variant``'s form): the fields it
    sets, only those that differ from the base."""
    variants = {}
    for name in settings:
        change = setting_changes(name, base, base_name)
        variants[name] = {k: v for k, v in change.items() if getattr(base, k) != v}
    return variants


def describe(base: Base, settings: Sequence[str]) -> list[str]:
    """One line for the base and one per setting: what it changes on this base, and by which
    rule."""
    source = (
        f"preset {base.preset}"
        if not base.changes
        else f"{base.source} (preset {base.preset} with "
        + ", ".join(f"{k}={compact(v)}" for k, v in base.changes.items())
        + ")"
    )
    lines = [
        f"base: {source}; every setting is the base plus exactly its change, paired with it by seed"
    ]
    width = max((len(s) for s in settings), default=0)
    for name in settings:
        change = setting_changes(name, base.config)
        text = ", ".join(
            f"{k} {compact(getattr(base.config, k))} -> {compact(v)}"
            for k, v in change.items()
            if getattr(base.config, k) != v
        )
        rule = f" (rule: {RULES[name]})" if name in RULES else ""
        lines.append(f"  {name:<{width}}  {text}{rule}")
    return lines
