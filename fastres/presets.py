"""The presets: named TrainConfigs, ``baseline`` and one per row of the original study's
ablation table (each ``baseline`` plus exactly its change), ``quick`` for a CPU and ``fast`` for
a GPU, with their descriptions and aliases.
"""

from __future__ import annotations

from typing import Any

from .config import TrainConfig
from .errors import ConfigError

BASELINE = TrainConfig(preset="baseline")

# One preset per row of the original study's ablation table (run there at 100 epochs),
# each `baseline` plus exactly the change its name says.
ABLATIONS: dict[str, tuple[str, TrainConfig]] = {
    "baseline": (
        "ResNet-18, SGD 0.9, lr 0.1, MultiStep x0.1 at 50%/75%, batch 128, wd 5e-4",
        BASELINE,
    ),
    "cosine": (
        "baseline with a cosine schedule",
        BASELINE.replace(lr_schedule="cosine", preset="cosine"),
    ),
    "no_schedule": (
        "baseline with a constant learning rate",
        BASELINE.replace(lr_schedule="none", preset="no_schedule"),
    ),
    "resnet34": ("baseline with ResNet-34", BASELINE.replace(model="resnet34", preset="resnet34")),
    "resnet50": (
        "baseline with ResNet-50 (Bottleneck)",
        BASELINE.replace(model="resnet50", preset="resnet50"),
    ),
    "no_batchnorm": (
        "baseline without BatchNorm, lr 0.01",
        BASELINE.replace(norm="none", lr=0.01, preset="no_batchnorm"),
    ),
    "small_batch": (
        "baseline with batch size 32",
        BASELINE.replace(batch_size=32, preset="small_batch"),
    ),
}

# Sized for a CPU without a GPU: a quarter-width ResNet-18 for 6 epochs. Short runs underfit,
# so what regularises a long run costs accuracy here: no random crop (flip only), a high peak
# lr decaying linearly to zero. Progressive resizing trains the first epochs at 16 px; the
# epochs at 24-32 px carry the accuracy. Mirroring each image on alternate epochs beat coin
# flips, and testing once, after the last epoch (with flip TTA), pays for the sixth epoch.
# The runs behind each choice: BENCHMARKS.md, "`quick`'s frontier, interleaved";
# docs/history/benchmarks-2026-11.md, "`quick` preset: accuracy and wall time" (crop, lr,
# schedule, TTA); docs/recipes-cpu/README.md, "Study 2" (lr, resizing, flips).
QUICK = BASELINE.replace(
    width=16,
    epochs=6,
    batch_size=256,
    lr=0.8,
    lr_schedule="linear",
    warmup_epochs=1.0,
    nesterov=True,
    label_smoothing=0.2,
    crop_padding=0,
    alternate_flip=True,
    min_res=16,
    res_ramp=(0.2, 0.8),
    eval_tta=True,
    eval_every=0,
    preset="quick",
)

# Time to accuracy on a GPU: the full-width ResNet-18 in 20 epochs instead of 200, aimed at
# 94% (the public record in the README's time-to-accuracy table, whose recipe this builds on:
# label smoothing and flip TTA). What the quick-scale ablations kept (alternating flips,
# multi-view TTA at the end) on top; a 2-pixel crop because 20 epochs want some augmentation
# where 6 want none. Muon for the filters: it beat SGD on the same recipe, paired by seed,
# at about twice the time per epoch (its optimizer step is launch-bound there); see
# BENCHMARKS.md, "`fast` end to end: accuracy and time". No progressive resizing: under
# torch.compile every new input size is a recompile, which costs more than the smaller
# epochs save on a GPU.
FAST = BASELINE.replace(
    epochs=20,
    batch_size=512,
    lr=0.4,
    lr_schedule="linear",
    warmup_epochs=2.0,
    nesterov=True,
    label_smoothing=0.2,
    crop_padding=2,
    alternate_flip=True,
    eval_tta=True,
    tta_translate=1,
    tta_final_only=True,
    optimizer="muon",
    preset="fast",
)

PRESETS: dict[str, TrainConfig] = {name: cfg for name, (_, cfg) in ABLATIONS.items()} | {
    "quick": QUICK,
    "fast": FAST,
}
DESCRIPTIONS: dict[str, str] = {name: desc for name, (desc, _) in ABLATIONS.items()} | {
    "quick": (
        "CPU-sized: ResNet-18 at width 16, 6 epochs growing from 16 to 32 px, alternating "
        "flips, tested once with flip TTA (minutes, no GPU)"
    ),
    "fast": (
        "GPU time to accuracy: full-width ResNet-18, 20 epochs, batch 512, Muon, alternating "
        "flips, multi-view TTA"
    ),
}
ALIASES: dict[str, str] = {
    "cosine_schedule": "cosine",
    "multistep": "baseline",
    "no_bn": "no_batchnorm",
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> TrainConfig:
    """A preset by name or alias; unknown names fail with the list of valid ones."""
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        valid = ", ".join(list(PRESETS) + [f"{a} (= {t})" for a, t in ALIASES.items()])
        raise ConfigError(f"unknown preset {name!r}: choose one of {valid}")
    return PRESETS[key]


def preset_differences(name: str) -> dict[str, tuple[Any, Any]]:
    """Fields in which a preset differs from ``baseline``: {field: (baseline, preset)}."""
    base, cfg = BASELINE.to_dict(), get_preset(name).to_dict()
    return {k: (base[k], cfg[k]) for k in cfg if k != "preset" and cfg[k] != base[k]}
