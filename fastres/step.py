"""The training step: today's eager ``train_step``, and ``GraphStep``, the same step in a form
a CUDA graph can hold (docs/gpu-step.md).

``GraphStep`` runs forward, loss, backward, the optimizer step and the weight average's update
with no host synchronisation: the learning rates are device tensors the optimizer reads (fused
SGD, ``FilterMuon``), filled from the scheduler's numbers before each step; the average is
updated with foreach operations and its count kept on the host. On CUDA each full-batch input
shape (every progressive-resizing size) gets its own graph, captured after a few eager steps
of that shape and replayed after; a partial batch (the trainer's loaders drop it) runs the same body
without a graph. On the CPU every step runs that body eagerly, which is what tests hold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class Runtime(Protocol):
    """What the step reads of ``fastres.runtime.Runtime`` (named here so that this module sits
    below the runtime's layer, beside the optimizer it steps)."""

    @property
    def device(self) -> torch.device: ...
    @property
    def amp_dtype(self) -> torch.dtype: ...
    @property
    def autocast(self) -> bool: ...
    @property
    def grad_scaler(self) -> bool: ...


# Eager steps of a shape before its graph is captured: cuDNN's autotuning, lazily created
# optimizer state and torch.compile's first call all happen there, not inside the capture.
WARMUP_STEPS = 3


def train_step(
    forward: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    x: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step (forward under autocast, loss, backward, step); no host sync.

    Returns the detached fp32 loss and the logits. Shared by the trainer and the benchmarks,
    so the benchmarked step is the trained one.
    """
    with torch.autocast(runtime.device.type, dtype=runtime.amp_dtype, enabled=runtime.autocast):
        out = forward(x)
        loss = criterion(out, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach().float(), out


def graph_obstacle(runtime: Runtime, distributed: bool) -> str | None:
    """Why this run cannot use ``GraphStep`` (None: it can)."""
    if runtime.grad_scaler:
        return "fp16's gradient scaler reads its overflow check on the host every step"
    if distributed:
        return "data-parallel gradient hooks are not captured"
    return None


@dataclass
class _Graph:
    """One captured step: the graph and the static tensors its kernels read and write."""

    graph: Any  # torch.cuda.CUDAGraph
    x: torch.Tensor
    labels: torch.Tensor
    loss: torch.Tensor
    out: torch.Tensor


class GraphStep:
    """A training step (optimizer step and weight average included) with no host sync inside.

    ``forward`` is the module called (compiled or not), ``model`` the plain one whose parameters
    and buffers ``ema`` averages with ``ema_decay``. ``capture`` None: graphs on CUDA only.
    Build it after a resume has loaded its state, or at least call it only after: the first
    capture happens at a call, and reads the tensors the optimizer and the average hold then.
    """

    def __init__(
        self,
        forward: nn.Module,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
        *,
        batch_size: int,
        ema: AveragedModel | None = None,
        ema_decay: float = 0.0,
        capture: bool | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.forward, self.model, self.criterion, self.optimizer = (
            forward,
            model,
            criterion,
            optimizer,
        )
        self.runtime, self.batch_size, self.log = runtime, batch_size, log
        self.ema, self.ema_decay = ema, ema_decay
        device = runtime.device
        self.capture = device.type == "cuda" if capture is None else capture
        if self.capture and device.type != "cuda":
            raise ValueError("GraphStep captures CUDA graphs only")
        # Fused SGD reads a float32 lr; FilterMuon a float64 one, which rounds as its float path.
        self.lrs = [
            torch.tensor(
                float(g["lr"]),
                device=device,
                dtype=torch.float32 if "fused" in g else torch.float64,
            )
            for g in optimizer.param_groups
        ]
        self.graphs: dict[tuple[Any, ...], _Graph] = {}
        self.seen: dict[tuple[Any, ...], int] = {}
        self.failed = False  # a capture failed: today's eager step from then on
        self.side_stream = torch.cuda.Stream(device) if self.capture else None
        self._ema_lists: tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]] | None = None
        self._ema_started: bool | None = None  # read once from the average's count, then kept here
        self.eager_steps = self.replays = 0

    # -- the body ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _graph_options(self) -> Iterator[None]:
        """The optimizer's groups read their learning rate from ``self.lrs`` and SGD runs fused
        (its foreach and per-parameter paths read a tensor lr with .item()); restored after, so
        the scheduler, the checkpoint and an eager resume see today's groups."""
        groups = self.optimizer.param_groups
        saved = [(g["lr"], g.get("fused"), g.get("foreach")) for g in groups]
        for group, lr in zip(groups, self.lrs, strict=True):
            group["lr"] = lr
            if "fused" in group:  # SGD's groups; FilterMuon takes a tensor lr as it is
                group["fused"], group["foreach"] = True, False
        try:
            yield
        finally:
            for group, (lr, fused, foreach) in zip(groups, saved, strict=True):
                group["lr"] = lr
                if "fused" in group:
                    group["fused"], group["foreach"] = fused, foreach

    def _body(
        self, x: torch.Tensor, labels: torch.Tensor, first_average: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rt = self.runtime
        with self._graph_options():
            # No autocast weight cache: cast copies made during a capture would outlive it.
            with torch.autocast(
                rt.device.type, dtype=rt.amp_dtype, enabled=rt.autocast, cache_enabled=False
            ):
                out = self.forward(x)
                loss = self.criterion(out, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.ema is not None:
                self._update_average(first_average)
        return loss.detach().float(), out

    def _update_average(self, first: bool) -> None:
        """AveragedModel.update_parameters with use_buffers and an EMA's multi_avg_fn, the same
        arithmetic, without its host->device copy of the count or its branch on it."""
        if self._ema_lists is None:
            assert self.ema is not None
            by_dtype: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
            pairs = zip(
                [*self.ema.module.parameters(), *self.ema.module.buffers()],
                [*self.model.parameters(), *self.model.buffers()],
                strict=True,
            )
            for averaged, current in pairs:
                lists = by_dtype.setdefault(averaged.dtype, ([], []))
                lists[0].append(averaged.detach())
                lists[1].append(current.detach())
            self._ema_lists = ([a for a, _ in by_dtype.values()], [c for _, c in by_dtype.values()])
        decay = self.ema_decay
        for averaged, current in zip(*self._ema_lists, strict=True):
            if first:
                torch._foreach_copy_(averaged, current)
            elif averaged[0].is_floating_point():
                torch._foreach_lerp_(averaged, current, 1 - decay)
            else:  # BatchNorm's step counts: the float expression cast back, as torch does
                mixed = torch._foreach_mul(averaged, decay)
                torch._foreach_add_(mixed, torch._foreach_mul(current, 1 - decay))
                torch._foreach_copy_(averaged, mixed)

    # -- a step --------------------------------------------------------------------------

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on augmented input ``x``; the detached fp32 loss and the logits (on CUDA,
        possibly a graph's static tensors, valid until the next step)."""
        for lr, group in zip(self.lrs, self.optimizer.param_groups, strict=True):
            lr.fill_(group["lr"])  # a kernel with the number as its argument: no sync
        if self._ema_started is None:
            self._ema_started = self.ema is not None and bool(self.ema.n_averaged > 0)
        first_average = self.ema is not None and not self._ema_started
        if self.failed:
            result = self._fallback(x, labels)
        elif not self.capture or first_average or labels.shape[0] != self.batch_size:
            result = self._eager(x, labels, first_average)
        else:
            result = self._graph_step(x, labels)
        if self.ema is not None:
            self.ema.n_averaged += 1  # on the host (AveragedModel keeps it there)
            self._ema_started = True
        return result

    def _eager(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        first_average: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.eager_steps += 1
        return self._body(x, labels, first_average)

    def _fallback(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Today's eager step, after a failed capture."""
        self.eager_steps += 1
        scaler = torch.amp.GradScaler(self.runtime.device.type, enabled=False)
        result = train_step(
            self.forward, self.criterion, self.optimizer, scaler, self.runtime, x, labels
        )
        if self.ema is not None:
            self._update_average(first=False)
        return result

    def _graph_step(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(x.shape), x.dtype, x.stride(), tuple(labels.shape))
        entry = self.graphs.get(key)
        if entry is None:
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] <= WARMUP_STEPS:
                return self._warm(x, labels)
            try:
                entry = self._capture(key, x, labels)
            except Exception as exc:  # noqa: BLE001 - any capture failure: step eagerly instead
                self.failed = True
                self.graphs.clear()
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                self.log(
                    f"cuda graph: capture failed ({type(exc).__name__}: {first}); "
                    "stepping eagerly from now on"
                )
                return self._fallback(x, labels)
        else:
            entry.x.copy_(x)
            entry.labels.copy_(labels)
        entry.graph.replay()
        self.replays += 1
        return entry.loss, entry.out

    def _warm(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An eager step on a side stream, as torch's whole-network capture recipe warms up
        (backward's gradient accumulation must not first run inside a capture)."""
        stream, current = self.side_stream, torch.cuda.current_stream(self.runtime.device)
        assert stream is not None
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            result = self._eager(x, labels, first_average=False)
        current.wait_stream(stream)
        return result

    def _capture(self, key: tuple[Any, ...], x: torch.Tensor, labels: torch.Tensor) -> _Graph:
        """Capture the body on static copies of this step's batch; the caller replays it, which
        is this step (a capture records the kernels without running them)."""
        static_x, static_labels = x.clone(), labels.clone()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the checkpoint writer's and TensorBoard's threads may run meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            loss, out = self._body(static_x, static_labels, first_average=False)
        entry = _Graph(graph, static_x, static_labels, loss, out)
        if not self.graphs:
            self.log(
                f"cuda graph: the step is captured (input {tuple(x.shape)}; "
                "each new input size gets its own)"
            )
        self.graphs[key] = entry
        return entry

    def describe(self) -> str:
        """How the steps so far ran, for a log line."""
        return (
            f"{self.replays} replayed from {len(self.graphs)} CUDA graph(s), "
            f"{self.eager_steps} eager" + (" (capture failed)" if self.failed else "")
        )
