"""Muon for convolution and linear filters, batched.

``torch.optim.Muon`` orthogonalises one 2-D matrix at a time: for every filter a momentum
update, a bf16 cast, a norm and five Newton-Schulz iterations of three matrix products, each
its own small kernel. A ResNet-18 has 21 filters, 12 distinct shapes among them, so its step
is several hundred small operations (on an H200 ~16 ms of launches a step, judged from epoch
times; BENCHMARKS.md "Muon's step, batched").
:class:`FilterMuon` runs the same algorithm on each set of same-shaped filters at once
(stacked, with batched matrix products and ``torch._foreach`` updates), and takes filters of
any shape: a convolution's (out, in, kh, kw) bank is the (out, in * kh * kw) matrix that
Muon orthogonalises, as it would be flattened for ``torch.optim.Muon``.

Same algorithm, same defaults, same ``state_dict`` as ``torch.optim.Muon`` on those flattened
filters (momentum buffers of shape (out, in * kh * kw) under the same keys), so checkpoints of
either load into the other. Results agree up to the rounding of batched matrix products (on
the 2-core CPU where this was written: bit for bit).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

# torch.optim.Muon's own defaults (Newton-Schulz coefficients, steps, eps), read from its
# signature so that both stay the same algorithm when torch changes them.
_TORCH_DEFAULTS = {name: p.default for name, p in inspect.signature(torch.optim.Muon.__init__).parameters.items()
                   if p.default is not inspect.Parameter.empty}


def _channels_last(t: Tensor) -> bool:
    """Whether ``t`` is a 4-D tensor laid out (out, kh, kw, in) in memory, as channels_last
    filters and their gradients are."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _stack_flat(tensors: list[Tensor]) -> Tensor:
    """The (G, out, in * kh * kw) stack of same-shaped ``tensors``, whatever their layout.
    channels_last tensors are stacked in their memory order and permuted once: stacking their
    (out, in, kh, kw) views would cost a copy per tensor."""
    if all(_channels_last(t) for t in tensors):
        stacked = torch.stack([t.permute(0, 2, 3, 1) for t in tensors]).permute(0, 1, 4, 2, 3)
    else:
        stacked = torch.stack(tensors)
    return stacked.reshape(len(tensors), tensors[0].shape[0], -1)


def _like_params(update: Tensor, params: list[Tensor]) -> list[Tensor]:
    """``update`` (G, out, in * kh * kw), cast to the parameters' dtype and laid out like them,
    split into one tensor per parameter (so a foreach update can take its fast path)."""
    shape = params[0].shape
    if all(_channels_last(p) for p in params):
        out, cin, kh, kw = shape
        physical = update.reshape(len(params), out, cin, kh, kw).permute(0, 1, 3, 4, 2)
        copied = physical.to(params[0].dtype, memory_format=torch.contiguous_format)
        return [u.permute(0, 3, 1, 2) for u in copied.unbind(0)]
    copied = update.to(params[0].dtype, memory_format=torch.contiguous_format)
    return [u.view(shape) for u in copied.unbind(0)]


def orthogonalise(x: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> Tensor:
    """Newton-Schulz orthogonalisation of each matrix of the (G, m, n) stack ``x``, in bf16, as
    ``torch.optim.Muon`` does it for one matrix: wide orientation, scaled to norm <= 1, ``steps``
    quintic iterations with ``coefficients`` (a, b, c)."""
    a, b, c = coefficients
    y = x.bfloat16()
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        y = y.mT
    y = y / torch.linalg.vector_norm(y, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = y @ y.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        y = torch.baddbmm(y, poly, y, beta=a)
    return y.mT if tall else y


class FilterMuon(torch.optim.Optimizer):
    """Muon (``torch.optim.Muon``'s algorithm: Nesterov momentum, Newton-Schulz
    orthogonalisation in bf16, decoupled weight decay, lr scaled by sqrt(max(1, out / fan_in)))
    for filters of two or more dimensions, same-shaped filters in one batch."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = _TORCH_DEFAULTS["lr"],
                 weight_decay: float = _TORCH_DEFAULTS["weight_decay"],
                 momentum: float = _TORCH_DEFAULTS["momentum"], nesterov: bool = _TORCH_DEFAULTS["nesterov"],
                 ns_coefficients: tuple[float, float, float] = _TORCH_DEFAULTS["ns_coefficients"],
                 eps: float = _TORCH_DEFAULTS["eps"], ns_steps: int = _TORCH_DEFAULTS["ns_steps"],
                 adjust_lr_fn: str | None = None) -> None:
        if adjust_lr_fn not in (None, "original"):
            raise ValueError(f"FilterMuon scales the lr as Muon's 'original' rule only, got adjust_lr_fn={adjust_lr_fn!r}")
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
                    "ns_coefficients": ns_coefficients, "eps": eps, "ns_steps": ns_steps,
                    "adjust_lr_fn": adjust_lr_fn}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon takes filters of 2 or more dimensions, got one of shape {tuple(p.shape)}")
        # Stacked momentum buffers, one per batch of same-shaped filters; the per-filter
        # ``state`` entries are views into them, so state_dict() sees torch.optim.Muon's layout.
        self._stacks: dict[tuple[int, ...], Tensor] = {}

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
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            for batch in self._batches(params):
                grads = _stack_flat([p.grad for p in batch])
                buf = self._momentum(batch, grads)
                buf.lerp_(grads, 1 - momentum)
                update = grads.lerp_(buf, momentum) if group["nesterov"] else buf
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                rows, cols = update.shape[-2:]
                scale = math.sqrt(max(1.0, rows / cols))
                torch._foreach_add_(batch, _like_params(update, batch), alpha=-lr * scale)
        return loss

    @staticmethod
    def _batches(params: list[Tensor]) -> list[list[Tensor]]:
        by_kind: dict[tuple[Any, ...], list[Tensor]] = {}
        for p in params:
            by_kind.setdefault((tuple(p.shape), p.dtype, p.device, _channels_last(p)), []).append(p)
        return list(by_kind.values())

    def _momentum(self, batch: list[Tensor], grads: Tensor) -> Tensor:
        """The batch's stacked momentum buffer: kept from the last step, or built from the
        per-filter buffers a loaded state_dict left (zeros for filters without one)."""
        key = tuple(id(p) for p in batch)
        stack = self._stacks.get(key)
        if stack is not None and all(self.state[p].get("momentum_buffer") is not None
                                     and self.state[p]["momentum_buffer"].data_ptr() == stack[i].data_ptr()
                                     for i, p in enumerate(batch)):
            return stack
        stack = torch.stack([self.state[p]["momentum_buffer"].reshape(g.shape) if "momentum_buffer" in self.state[p]
                             else torch.zeros_like(g) for p, g in zip(batch, grads.unbind(0), strict=True)])
        for p, view in zip(batch, stack.unbind(0), strict=True):
            self.state[p]["momentum_buffer"] = view
        self._stacks[key] = stack
        return stack
