"""What a run shows and records as it trains: each finished epoch's row in metrics.jsonl and
TensorBoard and its console line (``EpochLog``), and the per-step progress bar."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .files import write_failure, writing
from .rundir import TB_TAGS, RunDir


class EpochLog:
    """Where each finished epoch is recorded: metrics.jsonl and TensorBoard (by the process that
    writes the run directory) and a console line."""

    def __init__(
        self, run: RunDir, done_epochs: int, epochs: int, log: Callable[[str], None], *, write: bool
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run, self.epochs, self.log = run, epochs, log
        self.tb = None
        if write:
            _quiet_tensorboard_thread()
            # purge_step drops events past the checkpoint when a resumed run re-logs those epochs.
            with writing(run.tensorboard):
                self.tb = SummaryWriter(
                    str(run.tensorboard), purge_step=done_epochs + 1 if done_epochs else None
                )

    def record(self, row: dict[str, Any]) -> None:
        if self.tb is not None:
            self.run.append_metrics(row)
            try:
                for key, tag in TB_TAGS.items():
                    if row[key] is not None:  # val_* of an epoch without evaluation (--eval-every)
                        self.tb.add_scalar(tag, row[key], row["epoch"])
                if row.get("val_split_acc") is not None:
                    self.tb.add_scalar("acc/val_split", row["val_split_acc"], row["epoch"])
                    self.tb.add_scalar("loss/val_split", row["val_split_loss"], row["epoch"])
                self.tb.flush()
            except OSError as exc:
                raise write_failure(
                    f"the TensorBoard events in {self.run.tensorboard}", exc
                ) from None
        self.log(
            f"epoch {row['epoch']}/{self.epochs}  train loss {row['train_loss']:.4f} "
            f"acc {100 * row['train_acc']:.2f}%  " + _evaluation_text(row) + f"lr {row['lr']:.4g}  "
            f"{row['images_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s"
        )

    def close(self) -> None:
        tb, self.tb = self.tb, None
        if tb is not None:
            try:
                tb.close()
            except OSError as exc:
                raise write_failure(
                    f"the TensorBoard events in {self.run.tensorboard}", exc
                ) from None


def _evaluation_text(row: dict[str, Any]) -> str:
    """The epoch line's evaluation part: the held-out split's accuracy (with --val-split), then
    the test set's, or that neither was evaluated."""
    held = row.get("val_split_acc")
    text = f"held-out acc {100 * held:.2f}%  " if held is not None else ""
    if row["val_acc"] is not None:
        name = "test" if "val_split_acc" in row else "val"
        return text + f"{name} loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%  "
    return text or "not evaluated  "


def _quiet_tensorboard_thread() -> None:
    """TensorBoard writes events on a thread that prints a traceback when a write fails, and
    re-raises the error on the loop's next call, which turns it into a one-line error: keep
    that traceback off the console."""
    previous = threading.excepthook
    if getattr(previous, "fastres_quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (
            type(args.thread).__name__ == "_AsyncWriterThread"
            and issubclass(args.exc_type, OSError)
        ):
            previous(args)

    hook.fastres_quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


@contextlib.contextmanager
def progress_bar(show: bool, total: int, description: str) -> Iterator[Any]:
    """A per-step tqdm bar that disappears when the epoch ends, or None."""
    if not show:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
