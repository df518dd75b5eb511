"""The learning-rate schedule as a function of the optimizer step: what the trainer applies
and what ``fastres report`` plots."""

from __future__ import annotations

import math

from .config import TrainConfig


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of ``config.lr`` at optimizer step ``step`` (the schedule is per step)."""
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if config.lr_schedule in ("cosine", "linear"):
        total = config.epochs * steps_per_epoch - warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total))
        return (
            0.5 * (1 + math.cos(math.pi * progress))
            if config.lr_schedule == "cosine"
            else 1.0 - progress
        )
    if config.lr_schedule == "multistep":
        # Compare in steps so a milestone lands exactly on an epoch boundary.
        return config.lr_gamma ** sum(
            step >= round(m * steps_per_epoch) for m in config.milestone_epochs()
        )
    return 1.0
