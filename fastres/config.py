"""Training configuration: one validated dataclass, ``TrainConfig``, whose fields carry their
own help (the ``fastres train`` options are generated from them).

Every field can be overridden from the command line (``--field-name``), and every run
writes the resolved config as ``config.json``, which ``--config`` reads back
(``load_config_file``). What a field may hold is checked in ``fastres.config_checks``, the
command line's spelling of a config is ``fastres.config_options``, and the named configs are
``fastres.presets``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .config_checks import NATIVE_RES, RES_STEP, check_types, check_values
from .errors import ConfigError
from .models import MODELS, family, standard_width

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
        check_types(self)
        # Accept lists (from JSON) and normalise to a tuple so the config stays hashable.
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        object.__setattr__(self, "res_ramp", tuple(float(m) for m in self.res_ramp))
        check_values(self)

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


def _field_names(names: list[str]) -> str:
    """Field names for a one-line message: an odd one (a newline, a space) is quoted so it shows."""
    return ", ".join(n if n.isidentifier() else repr(n) for n in names)


def recipe_differences(recorded: TrainConfig, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Recipe fields (not machine ones) in which ``other`` differs: {field: (recorded, other)}."""
    mine, theirs = recorded.recipe(), other.recipe()
    return {k: (v, theirs[k]) for k, v in mine.items() if theirs[k] != v}


def describe_differences(diffs: Mapping[str, tuple[Any, Any]], other: str) -> str:
    """``lr (0.05 recorded, 0.5 given); epochs (...)`` with ``other`` naming the second value."""
    return "; ".join(f"{k} ({a!r} recorded, {b!r} {other})" for k, (a, b) in diffs.items())


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
