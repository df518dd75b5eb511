"""Training configuration: one validated dataclass, and the presets as named instances of it.

Every field can be overridden from the command line (``--field-name``), and every run
writes the resolved config as ``config.json``, which ``--config`` reads back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError, FastresError
from .models import MODELS, NORMS, check_model_name, check_width, family, standard_width

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

# Fields that describe the machine rather than the training recipe: they may differ
# between a run and its resume, and between runs that are meant to be comparable.
MACHINE_FIELDS = frozenset(
    {
        "precision",
        "channels_last",
        "compile",
        "loader",
        "num_workers",
        "threads",
        "data_dir",
        "run_dir",
        "device",
        "deterministic",
        "sync_bn",
        "cuda_graph",
        "muon_newton_schulz",
    }
)


@dataclass(frozen=True)
class TrainConfig:
    """A complete, validated description of one training run."""

    model: str = field(
        default="resnet18",
        metadata={
            "help": (
                f"architecture: {', '.join(MODELS)} (resnet20-110: the paper's CIFAR ResNets, "
                "docs/models.md)"
            )
        },
    )
    width: int = field(
        default=64,
        metadata={
            "help": (
                "channels of the first stage, doubled at each later one: 64 = the standard "
                "ResNet-18/34/50, 16 = the paper's resnet20-110 (even only); a --model of the "
                "other family without --width gets that family's standard"
            )
        },
    )
    norm: str = field(
        default="batch",
        metadata={
            "help": "normalisation layer: 'batch' or 'none' (no BatchNorm; convs get a bias)"
        },
    )
    epochs: int = field(default=200, metadata={"help": "number of passes over the training set"})
    batch_size: int = field(default=128, metadata={"help": "images per optimizer step"})
    lr: float = field(default=0.1, metadata={"help": "peak learning rate"})
    lr_schedule: str = field(
        default="multistep",
        metadata={
            "help": "learning-rate schedule: cosine, linear (to zero), multistep or none (constant)"
        },
    )
    milestones: tuple[float, ...] = field(
        default=(0.5, 0.75),
        metadata={
            "help": "multistep decay points: fractions of the run (0.5,0.75) or epochs (100,150)",
            "metavar": "M1,M2",
        },
    )
    lr_gamma: float = field(
        default=0.1, metadata={"help": "multistep decay factor at each milestone"}
    )
    warmup_epochs: float = field(
        default=0.0, metadata={"help": "linear warm-up from 0 to lr over this many epochs"}
    )
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum"})
    weight_decay: float = field(default=5e-4, metadata={"help": "L2 weight decay"})
    label_smoothing: float = field(
        default=0.0, metadata={"help": "cross-entropy label smoothing in [0, 1)"}
    )
    augment: bool = field(
        default=True,
        metadata={
            "help": (
                "random crop (zero padding --crop-padding) and horizontal flip on training batches"
            )
        },
    )
    alternate_flip: bool = field(
        default=False,
        metadata={
            "help": (
                "mirror each image on alternate epochs (a fair coin decides its first), "
                "instead of a coin flip every time it is seen"
            )
        },
    )
    crop_padding: int = field(
        default=4,
        metadata={
            "help": (
                "pixels of zero padding for the random crop: it shifts images by up to this much"
            )
        },
    )
    min_res: int = field(
        default=32,
        metadata={
            "help": (
                "progressive resizing: train the first epochs at this input size, growing to "
                "32 (32 = off)"
            )
        },
    )
    res_ramp: tuple[float, float] = field(
        default=(0.0, 0.0),
        metadata={
            "help": (
                "progressive resizing: the input size grows linearly from --min-res to 32 "
                "between these points of the run, as fractions (START,END), so an --epochs "
                "override keeps the shape"
            ),
            "metavar": "START,END",
        },
    )
    eval_tta: bool = field(
        default=False,
        metadata={
            "help": (
                "evaluate with flip test-time augmentation (the mean of each image's and its "
                "mirror's logits)"
            )
        },
    )
    tta_translate: int = field(
        default=0,
        metadata={
            "help": (
                "multi-view test-time augmentation: the flip pair plus the image shifted by "
                "this many pixels up-left and down-right, each with its mirror (0 = off; "
                "airbench uses 1)"
            )
        },
    )
    tta_final_only: bool = field(
        default=False,
        metadata={
            "help": (
                "apply --tta-translate only at the last epoch's evaluation (each view costs a "
                "test pass; earlier epochs use --eval-tta)"
            )
        },
    )
    eval_every: int = field(
        default=1,
        metadata={
            "help": (
                "evaluate on the test set every N epochs and always after the last (0 = after "
                "the last only: each evaluation costs a test pass, ~15%% of a short CPU run's "
                "time)"
            ),
            "metavar": "N",
        },
    )
    whiten_stem: bool = field(
        default=False,
        metadata={
            "help": (
                "initialise the stem convolution by patch whitening of the first training "
                "batch (airbench): filters are the top eigenvectors of the 3x3 patch "
                "covariance, scaled to unit variance, and their negatives"
            )
        },
    )
    ema: float = field(
        default=0.0,
        metadata={
            "help": (
                "exponential moving average of the weights and BatchNorm statistics, this "
                "decay per step (0 = off; e.g. 0.99): evaluated, checkpointed and what "
                "fastres eval tests"
            )
        },
    )
    bn_momentum: float = field(
        default=0.1,
        metadata={
            "help": (
                "BatchNorm running-statistics momentum (PyTorch's default 0.1; airbench uses "
                "0.4 for short runs)"
            )
        },
    )
    decay_norm_bias: bool = field(
        default=True,
        metadata={
            "help": (
                "weight decay on BatchNorm parameters and biases too (--no-decay-norm-bias: "
                "on filters only)"
            )
        },
    )
    bn_bias_lr: float = field(
        default=1.0,
        metadata={
            "help": (
                "learning-rate multiplier for BatchNorm biases (1 = the same lr as everything else)"
            )
        },
    )
    optimizer: str = field(
        default="sgd",
        metadata={
            "help": (
                "sgd, or muon: Muon (torch.optim.Muon, orthogonalised momentum) for the "
                "convolution and linear filters at --muon-lr, SGD for BatchNorm parameters "
                "and biases"
            )
        },
    )
    muon_lr: float = field(
        default=0.05,
        metadata={
            "help": (
                "Muon's peak learning rate for the filters (with --optimizer muon; the "
                "schedule scales it like --lr)"
            )
        },
    )
    muon_momentum: float = field(
        default=0.95, metadata={"help": "Muon's Nesterov momentum (with --optimizer muon)"}
    )
    shuffle: bool = field(
        default=True,
        metadata={"help": "shuffle the training set every epoch (off: sequential order)"},
    )
    sync_bn: bool = field(
        default=False, metadata={"help": "SyncBatchNorm across data-parallel processes (torchrun)"}
    )
    seed: int = field(
        default=42, metadata={"help": "seed for initialisation, data order and augmentation"}
    )
    train_subset: int = field(
        default=0, metadata={"help": "train on the first N training images only (0 = all 50,000)"}
    )
    test_subset: int = field(
        default=0, metadata={"help": "evaluate on the first N test images only (0 = all 10,000)"}
    )
    val_split: int = field(
        default=0,
        metadata={
            "help": (
                "hold out N training images (the same ones for every seed, class-balanced) to "
                "evaluate every epoch and choose the best epoch on; the test set is then "
                "evaluated after the last epoch only (0 = off)"
            ),
            "metavar": "N",
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 where supported, fp16 on older GPUs, else fp32), bf16, fp16 or fp32"
        },
    )
    channels_last: bool = field(
        default=True, metadata={"help": "channels_last memory format for activations and weights"}
    )
    compile: str = field(
        default="auto",
        metadata={"help": "torch.compile the model: auto (on for CUDA, off on CPU), on, off"},
    )
    cuda_graph: str = field(
        default="off",
        metadata={
            "help": (
                "on: the training step (forward, backward, optimizer, weight average) replayed as "
                "one "
                "CUDA graph per input size, with fused SGD reading the lr from the GPU; on the CPU "
                "the "
                "same step uncaptured (docs/gpu-step.md); off: the eager step"
            )
        },
    )
    muon_newton_schulz: str = field(
        default="eager",
        metadata={
            "help": (
                "how Muon runs Newton-Schulz (with --optimizer muon; the same weights to rounding, "
                "docs/gpu-step.md): eager (one batch per filter shape), compiled (all shapes as "
                "one torch.compile graph, whatever --compile says), padded (all filters "
                "zero-padded into one batch)"
            )
        },
    )
    loader: str = field(
        default="ffcv",
        metadata={
            "help": (
                "ffcv (read the .beton files) or memory (whole uint8 data set on the device, "
                "read from the CIFAR-10 source)"
            )
        },
    )
    num_workers: int = field(
        default=0, metadata={"help": "FFCV decoding threads (0 = 1 on CPU, 8 on CUDA)"}
    )
    threads: int = field(
        default=0,
        metadata={
            "help": (
                "CPU threads for torch's operators (0 = torch's default, one per core); "
                "fastres ablate --runs-per-device sets it to share the cores between runs"
            )
        },
    )
    device: str = field(
        default="auto", metadata={"help": "auto (CUDA when present, else CPU), cuda or cpu"}
    )
    deterministic: bool = field(
        default=False,
        metadata={
            "help": (
                "deterministic algorithms: identical results for identical configs on the "
                "same machine"
            )
        },
    )
    data_dir: str = field(
        default="data", metadata={"help": "where prepare-data wrote the .beton files"}
    )
    run_dir: str = field(
        default="", metadata={"help": "output folder (default runs/<preset>-<timestamp>)"}
    )
    preset: str = field(
        default="", metadata={"help": "the preset this config came from (informational)"}
    )

    def __post_init__(self) -> None:
        _validate_types(self)
        # Accept lists (from JSON) and normalise to a tuple so the config stays hashable.
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        object.__setattr__(self, "res_ramp", tuple(float(m) for m in self.res_ramp))
        _validate(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed, validated again. A model of the other family (a
        paper's CIFAR ResNet for an ImageNet-style one, or back) without a width takes its
        family's standard width: ResNet-20 at ResNet-18's 64 channels would be 16x its size."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(f"unknown config field(s): {_field_names(unknown)}")
        model = changes.get("model", self.model)
        if "width" not in changes and model in MODELS and family(model) != family(self.model):
            changes = {**changes, "width": standard_width(model)}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["res_ramp"] = list(self.res_ramp)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(
                f"a config must be a JSON object of TrainConfig fields, got {type(data).__name__}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config field(s): {_field_names(unknown)}; valid fields: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**data)

    def milestone_epochs(self) -> list[float]:
        """Milestones in epochs: fractions are scaled by ``epochs`` so the schedule keeps its
        shape."""
        if self.milestones and all(0 < m < 1 for m in self.milestones):
            return [m * self.epochs for m in self.milestones]
        return list(self.milestones)

    def resolution(self, epoch: int) -> int:
        """Training input size for 0-based ``epoch``: ``min_res`` until the ramp starts, then a
        linear ramp to the native 32, in steps of 4 pixels (so every stage keeps a whole size).
        The last epoch is always at 32: the model ends at the size it is tested at."""
        start, end = (f * self.epochs for f in self.res_ramp)
        if self.min_res >= NATIVE_RES or epoch >= min(end, self.epochs - 1):
            return NATIVE_RES
        if epoch <= start:
            return self.min_res
        res = self.min_res + (NATIVE_RES - self.min_res) * (epoch - start) / (end - start)
        return max(self.min_res, int(res) // RES_STEP * RES_STEP)

    def recipe(self) -> dict[str, Any]:
        """The fields that define the training recipe (everything but the machine)."""
        return {k: v for k, v in self.to_dict().items() if k not in MACHINE_FIELDS | {"preset"}}

    def recipe_digest(self) -> str:
        """SHA-256 of the recipe and the preset name: what a report files a run under."""
        text = json.dumps({**self.recipe(), "preset": self.preset}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


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


def _validate_types(c: TrainConfig) -> None:
    """Each field holds a value of its type (JSON and the Python API can pass anything), finite
    numbers, paths without NUL bytes, and nothing above ``MAXIMUM``."""
    for f in fields(c):
        name, value, kind = f.name, getattr(c, f.name), _FIELD_TYPES[f.name]
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


def _field_names(names: list[str]) -> str:
    """Field names for a one-line message: an odd one (a newline, a space) is quoted so it shows."""
    return ", ".join(n if n.isidentifier() else repr(n) for n in names)


def _choice(name: str, value: str, choices: tuple[str, ...] | Any) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _positive(name: str, value: float, flag: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be positive, got {value!r}: pass {flag} with a value > 0")


def _validate(c: TrainConfig) -> None:
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
                f"--{name.replace('_', '-')} N with N >= 1"
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
    _validate_milestones(c)
    _validate_resolution(c)
    _validate_recipe_options(c)


def _validate_recipe_options(c: TrainConfig) -> None:
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


def _validate_resolution(c: TrainConfig) -> None:
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


def _validate_milestones(c: TrainConfig) -> None:
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


# Fields given on the command line as a list of numbers, with an example of each.
NUMBER_LISTS = {"milestones": "0.5,0.75 or 100,150", "res_ramp": "0,0.75"}


def parse_numbers(text: str, name: str) -> tuple[float, ...]:
    """Parse ``"0.5,0.75"`` or ``"100 150"`` for the field ``name``; raises ConfigError on
    anything else."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"malformed {name} {text!r}: pass comma-separated numbers, e.g. "
            f"--{name.replace('_', '-')} "
            f"{NUMBER_LISTS[name]}"
        ) from None


# --- the command line's spelling of a config ---------------------------------------------


def option_flag(name: str) -> str:
    """The ``fastres train`` option of a TrainConfig field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def field_type(name: str) -> Any:
    """The type a field's option parses to (bool fields are on/off switches)."""
    return _FIELD_TYPES[name]


def option_args(values: Mapping[str, Any]) -> list[str]:
    """The ``fastres train`` options that set each TrainConfig field in ``values`` to exactly
    that value: the inverse of the options the CLI generates from the same fields."""
    args: list[str] = []
    for name, value in values.items():
        flag = option_flag(name)
        kind = field_type(name)
        if kind is bool:
            args.append(flag if value else "--no-" + flag[2:])
        elif name in NUMBER_LISTS:
            # repr keeps floats exact (1e-05, 0.1), so the parser gets back the very same value.
            args += [flag, ",".join(repr(float(v)) for v in value)]
        elif kind is float:
            args += [flag, repr(float(value))]
        else:
            args += [flag, str(value)]
    return args


def recipe_differences(recorded: TrainConfig, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Recipe fields (not machine ones) in which ``other`` differs: {field: (recorded, other)}."""
    mine, theirs = recorded.recipe(), other.recipe()
    return {k: (v, theirs[k]) for k, v in mine.items() if theirs[k] != v}


def describe_differences(diffs: Mapping[str, tuple[Any, Any]], other: str) -> str:
    """``lr (0.05 recorded, 0.5 given); epochs (...)`` with ``other`` naming the second value."""
    return "; ".join(f"{k} ({a!r} recorded, {b!r} {other})" for k, (a, b) in diffs.items())


_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)


# --- presets ---------------------------------------------------------------------------

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


def load_config_file(path: str | Path) -> TrainConfig:
    """Read a ``config.json`` written by a run (or by hand)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"config file {p} does not exist: pass a run's config.json or its run directory"
        ) from None
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise ConfigError(f"cannot read config file {p}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a JSON object of TrainConfig fields")
    return TrainConfig.from_dict(data)
