"""Muon for convolution and linear filters, batched.

``torch.optim.Muon`` orthogonalises one 2-D matrix at a time: for every filter a momentum
update, a bf16 cast, a norm and five Newton-Schulz iterations of three matrix products, each
its own small kernel. A ResNet-18 has 21 filters, 12 distinct shapes among them, so its step
is several hundred small operations, which on a GPU cost launches (BENCHMARKS.md, "Muon's
step, batched").
:class:`FilterMuon` runs the same algorithm on each set of same-shaped filters at once
(stacked, with batched matrix products and ``torch._foreach`` updates), and takes filters of
any shape: a convolution's (out, in, kh, kw) bank is the (out, in * kh * kw) matrix that
Muon orthogonalises, as it would be flattened for ``torch.optim.Muon``.

Same algorithm, same defaults, same ``state_dict`` as ``torch.optim.Muon`` on those flattened
filters (momentum buffers of shape (out, in * kh * kw) under the same keys), so checkpoints of
either load into the other. Results agree to rounding, not bit for bit: a step gives the same
weights, but over many steps last-bit differences appear and grow as any rounding difference
does in training, within a seed's noise (measured: BENCHMARKS.md, "Muon's step, batched").

Newton-Schulz is most of the step's launches: three matrix products per shape and iteration.
:class:`NewtonSchulz` runs a step's stacks one by one (``eager``, the default), as one compiled
graph, or zero-padded into one stack (fewer launches, ~5x the arithmetic for ResNet-18);
docs/gpu-step.md and BENCHMARKS.md ("Newton-Schulz in one graph or one stack") compare them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .config_checks import MUON_NEWTON_SCHULZ

# torch.optim.Muon's own defaults (Newton-Schulz coefficients, steps, eps), read from its
# signature so that both stay the same algorithm when torch changes them.
_TORCH_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(torch.optim.Muon.__init__).parameters.items()
    if p.default is not inspect.Parameter.empty
}


def _channels_last(t: Tensor) -> bool:
    """Whether ``t`` is a 4-D tensor laid out (out, kh, kw, in) in memory, as channels_last
    filters and their gradients are."""
    return (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    )


class _Batch:
    """Same-shaped filters stepped together: their stacked momentum, and the buffers they reuse
    every step (fresh buffers of this size cost page faults on a CPU, BENCHMARKS.md "Muon's
    step, batched"; on a GPU allocator calls are host time too)."""

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        p = params[0]
        self.count, self.shape = len(params), tuple(p.shape)
        out, fan_in = self.shape[0], math.prod(self.shape[1:])
        self.channels_last = _channels_last(p)
        self.momentum_stack: Tensor | None = None
        # channels_last tensors travel in their memory order, (out, kh, kw, in), and are permuted
        # once for the whole batch: stacking their (out, in, kh, kw) views costs a copy each.
        physical = (
            (self.count, out, *self.shape[2:], self.shape[1])
            if self.channels_last
            else (self.count, *self.shape)
        )
        self.grads_physical = p.new_empty(physical)
        self.grads = (
            p.new_empty((self.count, out, fan_in))
            if self.channels_last
            else self.grads_physical.view(self.count, out, fan_in)
        )
        self.update = p.new_empty(physical)
        # Each filter's update, laid out like the filter, so the foreach add takes its fast path.
        self.updates = [
            u.permute(0, 3, 1, 2) if self.channels_last else u for u in self.update.unbind(0)
        ]

    def stack_grads(self) -> Tensor:
        """The batch's gradients as one (G, out, in * kh * kw) stack, in the reused buffer."""
        grads = [q.grad for q in self.params]
        if self.channels_last and all(_channels_last(g) for g in grads):
            torch.stack([g.permute(0, 2, 3, 1) for g in grads], out=self.grads_physical)
            self.grads.view(self.count, *self.shape).copy_(
                self.grads_physical.permute(0, 1, 4, 2, 3)
            )
        else:
            torch.stack([g.reshape(self.shape[0], -1) for g in grads], out=self.grads)
        return self.grads

    def momentum(self, state: dict[Tensor, dict[str, Any]]) -> Tensor:
        """The stacked momentum buffer. The optimizer's per-filter ``state`` entries are views
        into it (so a state_dict has torch.optim.Muon's layout); it is built from them on the
        first step and after a state_dict is loaded (zeros where a filter has none)."""
        if self.momentum_stack is not None:
            return self.momentum_stack
        views = [state[p].get("momentum_buffer") for p in self.params]
        stack = torch.stack(
            [
                torch.zeros_like(g) if v is None else v.reshape(g.shape)
                for v, g in zip(views, self.grads.unbind(0), strict=True)
            ]
        )
        for p, view in zip(self.params, stack.unbind(0), strict=True):
            state[p]["momentum_buffer"] = view
        self.momentum_stack = stack
        return stack

    def apply(self, update: Tensor, alpha: float | Tensor) -> None:
        """Add ``alpha`` times the (G, out, in * kh * kw) ``update`` to the filters; a tensor
        ``alpha`` (from a tensor lr, which a CUDA graph reads) scales the update first."""
        if self.channels_last:
            out, cin, kh, kw = self.shape
            self.update.copy_(update.reshape(self.count, out, cin, kh, kw).permute(0, 1, 3, 4, 2))
        else:
            self.update.view(update.shape).copy_(update)
        if isinstance(alpha, Tensor):
            # p + alpha * u, rounded as the float path rounds it (no fused multiply-add).
            alpha = alpha.to(self.update.dtype)
            scales = [alpha.expand_as(u) for u in self.updates]
            torch._foreach_addcmul_(self.params, self.updates, scales)
        else:
            torch._foreach_add_(self.params, self.updates, alpha=alpha)


@dataclasses.dataclass
class NewtonSchulzBuffers:
    """The bf16 buffers of :func:`orthogonalise` for a stack of G wide (m <= n) matrices."""

    x: Tensor  # (G, m, n), twice: the iterate and the next one
    x_next: Tensor
    gram: Tensor  # (G, m, m), twice
    poly: Tensor

    @classmethod
    def for_stack(
        cls, count: int, rows: int, cols: int, device: torch.device
    ) -> NewtonSchulzBuffers:
        m, n = min(rows, cols), max(rows, cols)
        new = functools.partial(torch.empty, dtype=torch.bfloat16, device=device)
        return cls(new(count, m, n), new(count, m, n), new(count, m, m), new(count, m, m))


def orthogonalise(
    x: Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    buffers: NewtonSchulzBuffers | None = None,
) -> Tensor:
    """Newton-Schulz orthogonalisation of each matrix of the (G, m, n) stack ``x``, in bf16, as
    ``torch.optim.Muon`` does it for one matrix: wide orientation, scaled to norm <= 1, ``steps``
    quintic iterations with ``coefficients`` (a, b, c). Works in ``buffers`` when given (the
    result is a view of one of them)."""
    tall = x.shape[-2] > x.shape[-1]
    if buffers is None:
        buffers = NewtonSchulzBuffers.for_stack(*x.shape, device=x.device)
    buffers.x.copy_(x.mT if tall else x)
    y = _iterate(buffers, coefficients, steps, eps)
    return y.mT if tall else y


def _iterate(
    buffers: NewtonSchulzBuffers, coefficients: tuple[float, float, float], steps: int, eps: float
) -> Tensor:
    """:func:`orthogonalise` on the wide matrices already in ``buffers.x``: each scaled to norm
    <= 1, then ``steps`` iterations; the result is one of the two iterate buffers."""
    a, b, c = coefficients
    y, y_next = buffers.x, buffers.x_next
    y.div_(torch.linalg.vector_norm(y, dim=(-2, -1), keepdim=True).clamp(min=eps))
    for _ in range(steps):
        torch.bmm(y, y.mT, out=buffers.gram)
        torch.baddbmm(buffers.gram, buffers.gram, buffers.gram, beta=b, alpha=c, out=buffers.poly)
        torch.baddbmm(y, buffers.poly, y, beta=a, out=y_next)
        y, y_next = y_next, y
    return y


def _check_form(form: str) -> None:
    if form not in MUON_NEWTON_SCHULZ:
        raise ValueError(
            f"newton_schulz must be one of {', '.join(MUON_NEWTON_SCHULZ)}, got {form!r}"
        )


def _orthogonalise_all(
    stacks: list[Tensor], coefficients: tuple[float, float, float], steps: int, eps: float
) -> list[Tensor]:
    """Every stack orthogonalised: what the compiled form compiles, as one graph."""
    return [orthogonalise(x, coefficients, steps, eps) for x in stacks]


class NewtonSchulz:
    """:func:`orthogonalise` for a list of stacks whose shapes are the same every step (a
    parameter group's batches), in one of three forms (``MUON_NEWTON_SCHULZ``):

    - ``eager``: each stack on its own, in buffers reused between steps.
    - ``compiled``: all stacks as one ``torch.compile`` graph, compiled at the first call (the
      shapes never change: once). Inductor rounds to bf16 where eager does
      (``emulate_precision_casts``), so the numbers are the eager form's.
    - ``padded``: all matrices, each wide (m <= n), in the top-left corner of one zero-padded
      (G, m_max, n_max) stack, one batched iteration for all. Zero rows and columns change
      nothing: the norm is the same, and they stay exactly zero through X X^T, the polynomial
      and its product with X (0 times a finite number is 0), so each corner is what the matrix
      alone gives, to the rounding of the larger products (the padding is therefore written once:
      each step overwrites the corners). The price is arithmetic: :meth:`flops`.
    """

    def __init__(
        self,
        form: str,
        shapes: list[tuple[int, int, int]],
        device: torch.device,
        coefficients: tuple[float, float, float],
        steps: int,
        eps: float,
        compile_backend: str | Callable[..., Any] = "inductor",
    ) -> None:
        _check_form(form)
        self.form, self.shapes = form, [tuple(s) for s in shapes]
        self.coefficients, self.steps, self.eps = tuple(coefficients), steps, eps
        # The padded form's corners: (first matrix, count, m, n, tall) per stack, m <= n.
        self.corners, first = [], 0
        for count, rows, cols in self.shapes:
            self.corners.append((first, count, min(rows, cols), max(rows, cols), rows > cols))
            first += count
        wide = [(m, n) for _, _, m, n, _ in self.corners]
        self.padded_shape = (first, max(m for m, _ in wide), max(n for _, n in wide))
        self.buffers: list[NewtonSchulzBuffers] = []
        if form == "eager":
            self.buffers = [NewtonSchulzBuffers.for_stack(*s, device=device) for s in self.shapes]
        elif form == "padded":
            self.buffers = [NewtonSchulzBuffers.for_stack(*self.padded_shape, device=device)]
            self.buffers[0].x.zero_()
            self.buffers[0].x_next.zero_()
        self.compiled = None
        if form == "compiled":
            inductor = compile_backend == "inductor"
            self.compiled = torch.compile(
                functools.partial(
                    _orthogonalise_all, coefficients=self.coefficients, steps=steps, eps=eps
                ),
                fullgraph=True,
                dynamic=False,
                backend=compile_backend,
                options={"emulate_precision_casts": True} if inductor else None,
            )

    def __call__(self, stacks: list[Tensor]) -> list[Tensor]:
        """The stacks orthogonalised (views of reused buffers, valid until the next call)."""
        options = (self.coefficients, self.steps, self.eps)
        if self.compiled is not None:
            return self.compiled(stacks)
        if self.form == "eager":
            return [
                orthogonalise(x, *options, buffers)
                for x, buffers in zip(stacks, self.buffers, strict=True)
            ]
        (buffers,) = self.buffers
        for (first, count, m, n, tall), x in zip(self.corners, stacks, strict=True):
            buffers.x[first : first + count, :m, :n].copy_(x.mT if tall else x)
        y = _iterate(buffers, *options)
        corners = [y[first : first + count, :m, :n] for first, count, m, n, _ in self.corners]
        return [c.mT if tall else c for c, (*_, tall) in zip(corners, self.corners, strict=True)]

    def flops(self) -> int:
        """Floating-point operations of the matrix products per call (a multiply-add is two):
        per iteration and wide m x n matrix, X X^T and the product with X 2 m^2 n each, the
        polynomial's G G 2 m^3; the padded form pays for its padded shape."""
        shapes = [self.padded_shape] if self.form == "padded" else self.shapes
        total = 0
        for count, rows, cols in shapes:
            m, n = min(rows, cols), max(rows, cols)
            total += count * (4 * m * m * n + 2 * m**3)
        return self.steps * total


class FilterMuon(torch.optim.Optimizer):
    """Muon (``torch.optim.Muon``'s algorithm: Nesterov momentum, Newton-Schulz
    orthogonalisation in bf16, decoupled weight decay, lr scaled by sqrt(max(1, out / fan_in)))
    for filters of two or more dimensions, same-shaped filters in one batch. A group's ``lr``
    may be a 0-dim float64 tensor on the filters' device (what a CUDA graph reads; fastres.step):
    the step then gives the same numbers as with the float, without reading it on the host.
    ``newton_schulz`` picks how a step's batches are orthogonalised (:class:`NewtonSchulz`:
    ``eager``, ``compiled`` with ``compile_backend``, or ``padded``)."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = _TORCH_DEFAULTS["lr"],
        weight_decay: float = _TORCH_DEFAULTS["weight_decay"],
        momentum: float = _TORCH_DEFAULTS["momentum"],
        nesterov: bool = _TORCH_DEFAULTS["nesterov"],
        ns_coefficients: tuple[float, float, float] = _TORCH_DEFAULTS["ns_coefficients"],
        eps: float = _TORCH_DEFAULTS["eps"],
        ns_steps: int = _TORCH_DEFAULTS["ns_steps"],
        adjust_lr_fn: str | None = None,
        *,
        newton_schulz: str = "eager",
        compile_backend: str | Callable[..., Any] = "inductor",
    ) -> None:
        _check_form(newton_schulz)
        if adjust_lr_fn not in (None, "original"):
            raise ValueError(
                "FilterMuon scales the lr as Muon's 'original' rule only, got "
                f"adjust_lr_fn={adjust_lr_fn!r}"
            )
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_coefficients": ns_coefficients,
            "eps": eps,
            "ns_steps": ns_steps,
            "adjust_lr_fn": adjust_lr_fn,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(
                        "Muon takes filters of 2 or more dimensions, got one of shape "
                        f"{tuple(p.shape)}"
                    )
        self._batches_by_params: dict[tuple[int, ...], _Batch] = {}
        self.newton_schulz, self.compile_backend = newton_schulz, compile_backend
        self._newton_schulz: dict[tuple[Any, ...], NewtonSchulz] = {}

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, momentum = group["lr"], group["momentum"]
            shrink = 1 - lr * group["weight_decay"]
            # A tensor lr (read by a CUDA graph) in float64 gives the float path's numbers exactly.
            if isinstance(shrink, Tensor):
                shrink = shrink.to(params[0].dtype)
            torch._foreach_mul_(params, shrink)
            batches = self._batches(params)
            updates = []
            for batch in batches:
                grads = batch.stack_grads()
                buf = batch.momentum(self.state)
                buf.lerp_(grads, 1 - momentum)
                updates.append(grads.lerp_(buf, momentum) if group["nesterov"] else buf)
            updates = self._orthogonalise(batches, updates, group)
            for batch, update in zip(batches, updates, strict=True):
                rows, cols = update.shape[-2:]
                batch.apply(update, alpha=lr * -math.sqrt(max(1.0, rows / cols)))
        return loss

    def _orthogonalise(
        self, batches: list[_Batch], updates: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        """Each batch's update orthogonalised, in this optimizer's ``newton_schulz`` form."""
        options = (tuple(group["ns_coefficients"]), group["ns_steps"], group["eps"])
        key = (tuple(id(b) for b in batches), *options)
        if key not in self._newton_schulz:
            self._newton_schulz[key] = NewtonSchulz(
                self.newton_schulz,
                [tuple(u.shape) for u in updates],
                updates[0].device,
                *options,
                compile_backend=self.compile_backend,
            )
        return self._newton_schulz[key](updates)

    def newton_schulz_flops(self) -> int:
        """The matrix products' floating-point operations of a step in this optimizer's form,
        as its last step ran them (0 before the first): :meth:`NewtonSchulz.flops`."""
        return sum(ns.flops() for ns in self._newton_schulz.values())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for batch in self._batches_by_params.values():  # the loaded buffers replace the stacks
            batch.momentum_stack = None

    def _batches(self, params: list[Tensor]) -> list[_Batch]:
        by_kind: dict[tuple[Any, ...], list[Tensor]] = {}
        for p in params:
            by_kind.setdefault((tuple(p.shape), p.dtype, p.device, _channels_last(p)), []).append(p)
        batches = []
        for same in by_kind.values():
            key = tuple(id(p) for p in same)
            if key not in self._batches_by_params:
                self._batches_by_params[key] = _Batch(same)
            batches.append(self._batches_by_params[key])
        return batches
