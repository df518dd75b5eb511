"""FilterMuon: torch.optim.Muon's algorithm on filters of any shape, same-shaped filters batched."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fastres.models import build_model
from fastres.muon import FilterMuon

OPTIONS = {"lr": 0.05, "momentum": 0.95, "weight_decay": 5e-4}


def filters_of(channels_last: bool) -> list[nn.Parameter]:
    torch.manual_seed(0)
    model = build_model("resnet18", width=8)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return [p for p in model.parameters() if p.ndim >= 2]


def flat_copies(filters: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().reshape(p.shape[0], -1).clone() for p in filters]


def give_gradients(step: int, filters: list[nn.Parameter], flat: list[torch.Tensor]) -> None:
    torch.manual_seed(100 + step)
    for p, f in zip(filters, flat, strict=True):
        g = torch.randn(p.shape)
        p.grad = (
            g.contiguous(memory_format=torch.channels_last)
            if p.ndim == 4 and not p.is_contiguous()
            else g
        )
        f.grad = g.reshape(f.shape).clone()


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("nesterov", [True, False])
def test_same_updates_as_torch_muon_on_the_flattened_filters(channels_last, nesterov):
    filters = filters_of(channels_last)
    flat = flat_copies(filters)
    ours = FilterMuon(filters, nesterov=nesterov, **OPTIONS)
    reference = torch.optim.Muon(flat, nesterov=nesterov, **OPTIONS)
    for step in range(3):
        give_gradients(step, filters, flat)
        ours.step()
        reference.step()
    for p, f in zip(filters, flat, strict=True):
        torch.testing.assert_close(p.detach(), f.view(p.shape))
    assert {tuple(p.shape) for p in filters} >= {(8, 3, 3, 3), (16, 8, 1, 1), (10, 64)}, (
        "stem, shortcut, classifier"
    )
    if channels_last:
        assert filters[0].is_contiguous(memory_format=torch.channels_last), (
            "the filters keep their layout"
        )


class MatrixProducts(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (
            torch.ops.aten.mm,
            torch.ops.aten.addmm,
            torch.ops.aten.bmm,
            torch.ops.aten.baddbmm,
        ):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_same_shaped_filters_are_orthogonalised_together():
    # ResNet-18 has 21 filters in 12 shapes: torch.optim.Muon runs 3 matrix products per
    # filter per Newton-Schulz iteration, FilterMuon 3 per shape (the launches a GPU waits on).
    filters = filters_of(channels_last=True)
    shapes = {tuple(p.shape) for p in filters}
    assert (len(filters), len(shapes)) == (21, 12)
    flat = flat_copies(filters)
    give_gradients(0, filters, flat)
    counted = {}
    for name, optimizer in (
        ("ours", FilterMuon(filters, **OPTIONS)),
        ("torch", torch.optim.Muon(flat, **OPTIONS)),
    ):
        with MatrixProducts() as products:
            optimizer.step()
        counted[name] = products.count
    assert counted == {"ours": 3 * 5 * len(shapes), "torch": 3 * 5 * len(filters)}


def test_state_dicts_interchange_with_torch_muon():
    # Checkpoints written while fastres stepped torch.optim.Muon on flat copies still resume.
    filters = filters_of(channels_last=True)
    flat = flat_copies(filters)
    reference = torch.optim.Muon(flat, **OPTIONS)
    ours = FilterMuon(filters, **OPTIONS)
    for step in range(2):
        give_gradients(step, filters, flat)
        reference.step()
        for p in filters:
            p.grad.mul_(-3)
        ours.step()  # a momentum of its own, which the loaded state must replace
    with torch.no_grad():
        for p, f in zip(filters, flat, strict=True):
            p.copy_(f.view(p.shape))
    for p, f in zip(filters, flat, strict=True):
        p.grad = f.grad = None
    ours.load_state_dict(reference.state_dict())
    for step in range(2, 4):
        give_gradients(step, filters, flat)
        ours.step()
        reference.step()
    for p, f in zip(filters, flat, strict=True):
        torch.testing.assert_close(p.detach(), f.view(p.shape))
    # ...and the other way: ours has torch's format (momentum as (out, in * kh * kw) matrices).
    back = torch.optim.Muon(flat_copies(filters), **OPTIONS)
    back.load_state_dict(ours.state_dict())
    for mine, theirs in zip(ours.state.values(), back.state.values(), strict=True):
        assert torch.equal(mine["momentum_buffer"], theirs["momentum_buffer"])
    assert (
        ours.state_dict()["param_groups"][0].keys()
        == reference.state_dict()["param_groups"][0].keys()
    )


def test_filters_without_a_gradient_are_left_alone():
    filters = filters_of(channels_last=True)
    before = [p.detach().clone() for p in filters]
    flat = flat_copies(filters)
    give_gradients(0, filters, flat)
    filters[1].grad = None
    FilterMuon(filters, **OPTIONS).step()
    assert torch.equal(filters[1], before[1])
    assert not torch.equal(filters[2], before[2])


def test_refuses_what_muon_does_not_take():
    with pytest.raises(ValueError, match="2 or more dimensions"):
        FilterMuon([nn.Parameter(torch.zeros(4))])
