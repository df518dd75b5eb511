"""How a stopped run ends: the errors a training run raises, each one line that says what
happened, where the run stands and the command that continues it."""

from __future__ import annotations

from .config import TrainConfig
from .errors import DeviceFault, FastresError
from .files import WriteError
from .rundir import RunDir
from .runtime import Runtime, device_fault, is_out_of_memory
from .schedule import lr_factor


class TrainingDiverged(FastresError):
    exit_code = 3


class Interrupted(FastresError):
    """Ctrl-C or SIGTERM: the run stopped cleanly and can be resumed."""


class TrainingFailed(FastresError):
    """The run stopped on a fault that is not bad input (e.g. out of memory); it can be resumed."""

    exit_code = 1


def diverged(
    config: TrainConfig, run: RunDir, epoch: int, step: int, steps_per_epoch: int
) -> TrainingDiverged:
    """The error for a loss that was not finite at ``step`` of epoch ``epoch`` (both from 0):
    the learning rate there, and what usually keeps training stable."""
    lr = config.lr * lr_factor(config, epoch * steps_per_epoch + step, steps_per_epoch)
    hint = (
        "enable BatchNorm (--norm batch)"
        if config.norm == "none"
        else "use fp32 (--precision fp32)"
    )
    return TrainingDiverged(
        f"training diverged: non-finite loss at epoch {epoch + 1}, step {step + 1} "
        f"(lr {lr:.4g}); lower --lr (now {config.lr:g}), add --warmup-epochs, "
        f"or {hint}. The last good checkpoint is {run.last_checkpoint}"
    )


def out_of_memory_at_start(config: TrainConfig, runtime: Runtime) -> TrainingFailed:
    """The one-line error for memory running out before the first step (building the model,
    the optimizer or the data on the device)."""
    return TrainingFailed(
        f"out of memory setting up {config.model} (width {config.width}, "
        f"batch size {config.batch_size}) on {runtime.device_name}, before training began: "
        "pass a smaller --width or --batch-size"
    )


def explain(
    exc: BaseException,
    *,
    config: TrainConfig,
    runtime: Runtime,
    run: RunDir,
    epoch: int,
    notes: list[str],
) -> BaseException:
    """The one-line error a run stopped by ``exc`` after ``epoch`` finished epochs ends with:
    what happened, where the run stands, and the command that continues it, plus ``notes``
    (what also failed while it was stopping). A bug's own exception is returned as it is."""
    resume = f"fastres train --resume {run.path}"
    if isinstance(exc, KeyboardInterrupt):
        # 128 + signal number, the shell's convention: 130 for Ctrl-C, 143 for SIGTERM.
        error: FastresError = Interrupted(
            f"interrupted after epoch {epoch}/{config.epochs}; continue with: {resume}",
            exit_code=128 + getattr(exc, "signum", 2),
        )
    elif isinstance(exc, WriteError):
        error = WriteError(
            f"{exc}; the files written before are intact: make room, then continue with: {resume}"
        )
    elif is_out_of_memory(exc):
        error = _out_of_memory(config, runtime, run, resume)
    elif (fault := device_fault(exc)) is not None:
        # The CUDA context is lost with it, but the checkpoints are on the host: a new process
        # resumes.
        kept = (
            f"the last good checkpoint is {run.last_checkpoint}"
            if run.last_checkpoint.exists()
            else "no epoch had finished"
        )
        error = DeviceFault(
            f"the GPU failed during epoch {epoch + 1}/{config.epochs} on {runtime.device_name} "
            f"({fault}); {kept}: continue with: {resume} "
            "(if it fails again at the same point, CUDA_LAUNCH_BLOCKING=1 names the failing "
            "operation)"
        )
    elif isinstance(exc, FastresError):
        error = exc
    else:
        return exc  # a bug: its own traceback is what helps
    if notes:
        error.args = (f"{error} (also: {'; '.join(notes)})",)
    return error


def _out_of_memory(config: TrainConfig, rt: Runtime, run: RunDir, resume: str) -> TrainingFailed:
    """Out of memory during training: a smaller batch for a new run, or a lower precision
    for this one."""
    lower = "fp16" if rt.device.type == "cuda" else "bf16"
    return TrainingFailed(
        f"out of memory training {config.model} (width {config.width}) "
        f"at batch size {config.batch_size} "
        f"in {rt.precision} on {rt.device_name}: start a new run with a smaller --batch-size "
        f"(e.g. {max(1, config.batch_size // 2)})"
        + (
            f", or continue this one with: {resume} --precision {lower}"
            if rt.precision == "fp32"
            else ""
        )
        + f"; the last good checkpoint is {run.last_checkpoint}"
    )
