"""What a TrainConfig may hold: each field's type and bounds, the choices a field takes, and the
rules between fields. ``TrainConfig.__post_init__`` (``fastres.config``) runs these checks on
every config, however it was made (the command line, a config file, the Python API); each
failure is a ``ConfigError`` that names the option that fixes it.
"""

from __future__ import annotations

import functools
import math
import typing
from dataclasses import fields
from typing import Any

from .errors import ConfigError, FastresError
from .formatting import option_flag
from .models import NORMS, check_model_name, check_width

SCHEDULES = ("cosine", "linear", "multistep", "none")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("sgd", "muon")
COMPILE_MODES = ("auto", "on", "off")
CUDA_GRAPH_MODES = ("off", "on")
MUON_NEWTON_SCHULZ = ("eager", "compiled", "padded")
LOADERS = ("ffcv", "memory")
DEVICES = ("auto", "cuda", "cpu")
NATIVE_RES = 32  # CIFAR-10's image size
RES_STEP = 4

# Bounds that keep a value inside what the training can compute: larger seeds overflow numpy's
# and FFCV's seeding, larger learning rates overflow float32 in the optimizer step, larger
# sizes only reach the kernel's out-of-memory killer.
MAXIMUM: dict[str, float] = {
    "seed": 2**31 - 1,
    "width": 1024,
    "epochs": 100_000,
    "batch_size": 1_000_000,
    "lr": 1e3,
    "muon_lr": 1e3,
    "bn_bias_lr": 1e3,
    "weight_decay": 1e3,
    "lr_gamma": 1,
    "warmup_epochs": 100_000,
    "crop_padding": 16,
    "train_subset": 10**9,
    "test_subset": 10**9,
    "num_workers": 1024,
    "threads": 4096,
    "eval_every": 100_000,
}


@functools.cache
def _field_types(config_class: type) -> dict[str, Any]:
    """Each field's type as the dataclass declares it (bool, int, float, str, a tuple of
    numbers)."""
    return typing.get_type_hints(config_class)


def check_types(c: Any) -> None:
    """Each field holds a value of its type (JSON and the Python API can pass anything), finite
    numbers, paths without NUL bytes, and nothing above ``MAXIMUM``. ``c`` is a TrainConfig
    (this module sits below ``fastres.config``, which calls it)."""
    types = _field_types(type(c))
    for f in fields(c):
        name, value, kind = f.name, getattr(c, f.name), types[f.name]
        flag = option_flag(name)
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, int | float) and not isinstance(
                value, bool
            )  # NaN: each field's check
        elif kind is str:
            ok = isinstance(value, str) and "\x00" not in value
        else:  # a list of numbers
            ok = (
                isinstance(value, list | tuple)
                and len(value) <= 64
                and all(
                    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                    for v in value
                )
            )
        if not ok:
            what = {
                bool: "true or false",
                int: "an integer",
                float: "a number",
                str: "a string without NUL bytes",
            }.get(kind, "a list of at most 64 finite numbers")
            raise ConfigError(
                f"{name} must be {what}, got {value!r:.80}: fix it in the config file or pass "
                f"{flag}"
            )
        if (
            name in MAXIMUM
            and not math.isnan(value)
            and (value > MAXIMUM[name] or (name == "seed" and value < 0))
        ):
            high = MAXIMUM[name]
            bound = ("from 0 to " if name == "seed" else "at most ") + (
                f"{high:_}" if isinstance(high, int) else f"{high:g}"
            )
            raise ConfigError(
                f"{name} must be {bound}, got {value!r:.80}: pass {flag} with a value in that range"
            )


def _choice(name: str, value: str, choices: tuple[str, ...] | Any) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _positive(name: str, value: float, flag: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be positive, got {value!r}: pass {flag} with a value > 0")


def check_values(c: Any) -> None:
    """Each field's value is one it may take, and the fields agree with each other; ``c`` is a
    TrainConfig whose types ``check_types`` has checked."""
    try:
        check_model_name(c.model)
    except FastresError as exc:
        raise ConfigError(str(exc)) from None
    _choice("norm", c.norm, NORMS)
    _choice("lr_schedule", c.lr_schedule, SCHEDULES)
    _choice("precision", c.precision, PRECISIONS)
    _choice("compile", c.compile, COMPILE_MODES)
    _choice("cuda_graph", c.cuda_graph, CUDA_GRAPH_MODES)
    _choice("muon_newton_schulz", c.muon_newton_schulz, MUON_NEWTON_SCHULZ)
    _choice("loader", c.loader, LOADERS)
    _choice("device", c.device, DEVICES)
    for name in ("width", "epochs", "batch_size"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(
                f"{name} must be a positive integer, got {value!r}: pass "
                f"{option_flag(name)} N with N >= 1"
            )
    _positive("lr", c.lr, "--lr")
    _positive("lr_gamma", c.lr_gamma, "--lr-gamma")
    for name in ("momentum", "weight_decay", "warmup_epochs", "label_smoothing"):
        value = getattr(c, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    if c.momentum >= 1:
        raise ConfigError(f"momentum must be below 1, got {c.momentum}")
    if c.nesterov and c.momentum == 0:
        raise ConfigError("nesterov needs a momentum > 0: pass --momentum 0.9 or --no-nesterov")
    if c.label_smoothing >= 1:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {c.label_smoothing}")
    if c.warmup_epochs >= c.epochs:
        raise ConfigError(
            f"warmup_epochs ({c.warmup_epochs}) must be shorter than the run ({c.epochs} epochs)"
        )
    for name in (
        "train_subset",
        "test_subset",
        "num_workers",
        "threads",
        "crop_padding",
        "eval_every",
        "val_split",
    ):
        if getattr(c, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(c, name)}")
    try:
        check_width(c.model, c.width)
    except FastresError as exc:
        raise ConfigError(str(exc)) from None
    if c.train_subset and c.val_split >= c.train_subset:
        raise ConfigError(
            f"val_split {c.val_split} leaves none of the {c.train_subset} images of --train-subset "
            "to "
            f"train on: pass a --val-split below {c.train_subset} (e.g. {c.train_subset // 10})"
        )
    _check_milestones(c)
    _check_resolution(c)
    _check_recipe_options(c)


def _check_recipe_options(c: Any) -> None:
    if not (isinstance(c.ema, int | float) and math.isfinite(c.ema) and 0 <= c.ema < 1):
        raise ConfigError(
            f"ema must be a decay in [0, 1) (0 = off), got {c.ema!r}: pass e.g. --ema 0.99"
        )
    if not (
        isinstance(c.bn_momentum, int | float)
        and math.isfinite(c.bn_momentum)
        and 0 < c.bn_momentum <= 1
    ):
        raise ConfigError(
            f"bn_momentum must be in (0, 1], got {c.bn_momentum!r}: pass e.g. --bn-momentum 0.4 "
            "(PyTorch's default is 0.1)"
        )
    _positive("bn_bias_lr", c.bn_bias_lr, "--bn-bias-lr")
    _choice("optimizer", c.optimizer, OPTIMIZERS)
    _positive("muon_lr", c.muon_lr, "--muon-lr")
    if not (isinstance(c.muon_momentum, int | float) and 0 <= c.muon_momentum < 1):
        raise ConfigError(
            f"muon_momentum must be in [0, 1), got {c.muon_momentum!r}: pass e.g. --muon-momentum "
            "0.95"
        )
    if (
        not isinstance(c.tta_translate, int)
        or isinstance(c.tta_translate, bool)
        or not 0 <= c.tta_translate <= 4
    ):
        raise ConfigError(
            f"tta_translate must be 0 to 4 pixels, got {c.tta_translate!r}: pass e.g. "
            "--tta-translate 1"
        )
    if c.alternate_flip and not c.augment:
        raise ConfigError(
            "alternate_flip says how images are mirrored, and --no-augment turns flips off: drop "
            "one"
        )
    if c.tta_final_only and not c.tta_translate:
        raise ConfigError(
            "tta_final_only needs --tta-translate N: it says when the multi-view TTA applies"
        )


def _check_resolution(c: Any) -> None:
    if (
        not isinstance(c.min_res, int)
        or isinstance(c.min_res, bool)
        or not 8 <= c.min_res <= NATIVE_RES
        or c.min_res % RES_STEP
    ):
        raise ConfigError(
            f"min_res must be a multiple of {RES_STEP} from 8 to {NATIVE_RES}, got {c.min_res!r}: "
            f"pass e.g. --min-res 16 (or {NATIVE_RES} to train at full size throughout)"
        )
    hint = (
        "pass --res-ramp START,END as fractions of the run, 0 <= START <= END <= 1, e.g. "
        "--res-ramp 0,0.75"
    )
    if len(c.res_ramp) != 2:
        raise ConfigError(
            f"res_ramp needs two fractions of the run (START,END), got {list(c.res_ramp)}: {hint}"
        )
    start, end = c.res_ramp
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start <= end <= 1):
        raise ConfigError(f"res_ramp {list(c.res_ramp)} is not a part of the run: {hint}")
    if c.min_res < NATIVE_RES and end == 0:
        raise ConfigError(f"min_res {c.min_res} needs a ramp that ends inside the run: {hint}")


def _check_milestones(c: Any) -> None:
    ms = c.milestones
    hint = (
        "pass --milestones as increasing fractions of the run (0.5,0.75) or increasing epochs "
        "(100,150)"
    )
    if c.lr_schedule != "multistep":
        return
    if not ms:
        raise ConfigError(f"the multistep schedule needs milestones: {hint}")
    if any(not math.isfinite(m) or m <= 0 for m in ms):
        raise ConfigError(f"milestones must be positive, got {list(ms)}: {hint}")
    fractions = all(m < 1 for m in ms)
    if not fractions and any(m < 1 or m != int(m) for m in ms):
        raise ConfigError(f"milestones mix fractions and epochs, got {list(ms)}: {hint}")
    if list(ms) != sorted(set(ms)):
        raise ConfigError(f"milestones must be strictly increasing, got {list(ms)}: {hint}")
    if not fractions and ms[-1] >= c.epochs:
        raise ConfigError(
            f"milestone epoch {int(ms[-1])} is not inside the {c.epochs}-epoch run: {hint}"
        )
