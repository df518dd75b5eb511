"""Operators dispatched per training step, counted on the CPU: a proxy for a GPU's kernel
launches, which held the H200's step back (BENCHMARKS.md "NVIDIA H200"), that a test can hold.

A ``TorchDispatchMode`` sees every aten operator the step calls from Python or autograd, once
each (what an operator runs inside is not seen); views and the profiler's markers are left
out, since they launch nothing. The eager step's SGD is forced onto its foreach path, which is
what it takes on CUDA (on a CPU it loops over the parameters). A ``foreach`` operator counts
once, as on CUDA, where it is one launch per few dozen tensors.

:func:`count_muon_forms` counts Muon's step for each form of its Newton-Schulz
(``fastres.muon.NewtonSchulz``); a compiled graph cannot run under a dispatch mode, so for it
the kernels that inductor's generated code launches are counted instead.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .. import recipe
from ..config_checks import MUON_NEWTON_SCHULZ
from ..models import build_model
from ..muon import FilterMuon, NewtonSchulz
from ..presets import get_preset
from ..runtime import Runtime
from ..step import GraphStep, train_step

STEPS = ("eager", "graph")


class OpCounter(TorchDispatchMode):
    """Counts the non-view aten operators dispatched while it is active, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not func.is_view and func.namespace != "profiler":
            self.counts[func.name()] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def count_step_ops(
    *,
    optimizer: str = "sgd",
    ema: float = 0.0,
    step: str = "eager",
    model: str = "resnet18",
    width: int = 64,
    batch_size: int = 2,
    preset: str = "fast",
) -> dict[str, Any]:
    """Operators of one training step (the third: the first ones create optimizer state) of
    ``model`` with ``preset``'s parameter groups, ``optimizer`` and ``ema``, as fastres runs it
    on a GPU (bf16 autocast, channels_last). ``step``: ``eager`` (today's train_step and
    AveragedModel's update) or ``graph`` (GraphStep's body, uncaptured: what its graph holds).

    Returns ``total``, ``forward_backward`` (forward, loss and backward alone: the same in
    both), ``optimizer_and_average`` (the rest) and ``by_op``. For ``graph``,
    ``host_ops_with_graph`` is what the host launches per step once captured: a fill per
    learning rate, the batch's two copies into the static inputs and the replay.
    """
    if step not in STEPS:
        raise ValueError(f"step must be one of {', '.join(STEPS)}, got {step!r}")
    config = get_preset(preset).replace(
        optimizer=optimizer, ema=ema, width=width, batch_size=batch_size
    )
    runtime = Runtime(torch.device("cpu"), "cpu", "bf16", compile=False, channels_last=True)
    torch.manual_seed(0)
    net = runtime.place(build_model(model, norm=config.norm, width=width))
    recipe.set_bn_momentum(net, config.bn_momentum)
    opt = recipe.build_optimizer(net, config)
    for group in opt.param_groups:
        if "foreach" in group:  # SGD: its CUDA default
            group["foreach"] = True
    average = recipe.build_ema(net, ema)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    graph = (
        GraphStep(
            net,
            net,
            criterion,
            opt,
            runtime,
            batch_size=batch_size,
            ema=average,
            ema_decay=ema,
            capture=False,
        )
        if step == "graph"
        else None
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, 32, 32, generator=gen).to(
        runtime.amp_dtype, memory_format=torch.channels_last
    )
    labels = torch.randint(0, 10, (batch_size,), generator=gen)
    counter = _count_third_step(net, criterion, opt, runtime, average, graph, x, labels)
    opt.zero_grad(set_to_none=True)  # as the step does: backward then creates the gradients
    with OpCounter() as model_only:
        with torch.autocast("cpu", dtype=runtime.amp_dtype):
            loss = criterion(net(x), labels)
        loss.backward()
    result = {
        "model": model,
        "optimizer": optimizer,
        "ema": ema,
        "step": step,
        "preset": preset,
        "total": counter.total,
        "forward_backward": model_only.total,
        "optimizer_and_average": counter.total - model_only.total,
        "by_op": dict(counter.counts.most_common()),
    }
    if graph is not None:
        result["host_ops_with_graph"] = len(graph.lrs) + 3
    return result


def _count_third_step(
    net: nn.Module,
    criterion: nn.Module,
    opt: torch.optim.Optimizer,
    runtime: Runtime,
    average: Any,
    graph: GraphStep | None,
    x: torch.Tensor,
    labels: torch.Tensor,
) -> OpCounter:
    """The operators of the third step (the first ones create optimizer state): ``graph``'s
    body, or the eager step and the weight average's update."""
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def one_step() -> None:
        if graph is not None:
            graph(x, labels)
            return
        train_step(net, criterion, opt, scaler, runtime, x, labels)
        if average is not None:
            average.update_parameters(net)

    for _ in range(2):
        one_step()
    with OpCounter() as counter:
        one_step()
    return counter


MATRIX_PRODUCTS = ("bmm", "baddbmm", "mm", "addmm")
MUON_OPTIONS = {"lr": 0.05, "momentum": 0.95, "weight_decay": 5e-4}


def count_muon_forms(
    *, model: str = "resnet18", width: int = 64, forms: tuple[str, ...] = MUON_NEWTON_SCHULZ
) -> list[dict[str, Any]]:
    """Muon's optimizer step (``FilterMuon``, channels_last filters, random gradients) for each
    form of its Newton-Schulz: ``newton_schulz`` (its operators; for ``compiled`` the kernels
    inductor's code for the CPU launches: fused kernels and library calls), ``matrix_products``
    among them, ``rest`` (the step's other operators: the same in every form), ``total``, the
    matrix products' ``flops`` and ``by_op``. Counts do not depend on ``width``."""
    torch.manual_seed(0)
    net = build_model(model, width=width).to(memory_format=torch.channels_last)
    filters = [p for p in net.parameters() if p.ndim >= 2]
    for p in filters:
        p.grad = torch.randn_like(p)
    optimizer = FilterMuon(filters, **MUON_OPTIONS)
    for _ in range(2):  # the first step creates the momentum
        optimizer.step()
    with OpCounter() as step:
        optimizer.step()
    # FilterMuon's stacks: one per filter shape, in order of appearance.
    by_shape = Counter(tuple(p.shape) for p in filters)
    shapes = [(n, s[0], math.prod(s[1:])) for s, n in by_shape.items()]
    stacks = [torch.randn(s) for s in shapes]
    defaults = optimizer.defaults
    options = (defaults["ns_coefficients"], defaults["ns_steps"], defaults["eps"])
    eager = _counted(NewtonSchulz("eager", shapes, torch.device("cpu"), *options), stacks)
    rest = step.total - sum(eager.values())  # the step less its (eager) Newton-Schulz
    rows = []
    for form in forms:
        ns = NewtonSchulz(form, shapes, torch.device("cpu"), *options)
        counts = _compiled_launches(ns, stacks) if form == "compiled" else _counted(ns, stacks)
        total = sum(counts.values())
        rows.append(
            {
                "model": model,
                "form": form,
                "stacks": len(shapes),
                "newton_schulz": total,
                "matrix_products": sum(counts[op] for op in MATRIX_PRODUCTS),
                "rest": rest,
                "total": rest + total,
                "flops": ns.flops(),
                "by_op": dict(counts.most_common()),
            }
        )
    return rows


def _counted(ns: NewtonSchulz, stacks: list[torch.Tensor]) -> Counter[str]:
    ns(stacks)
    with OpCounter() as counter:
        ns(stacks)
    return Counter({name.split("::")[-1].split(".")[0]: n for name, n in counter.counts.items()})


def _compiled_launches(ns: NewtonSchulz, stacks: list[torch.Tensor]) -> Counter[str]:
    """The kernels one call of the compiled graph launches, read from inductor's code: its
    fused kernels (``fused``) and library calls (by operator); allocations not counted."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    _, codes = run_and_get_code(ns, stacks)
    counts: Counter[str] = Counter()
    for code in codes:
        body = code[code.index("def call(") :].split("\ndef ", 1)[0]
        for name in re.findall(r"^\s+(?:\w+ = )?([A-Za-z_][\w.]*)\(", body, flags=re.M):
            if name.startswith(("cpp_fused", "triton_")):
                counts["fused"] += 1
            elif name.startswith(("extern_kernels.", "aten.", "torch.ops.")):
                counts[name.split(".")[-1]] += 1
    return counts
