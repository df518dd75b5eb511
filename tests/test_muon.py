"""FilterMuon: torch.optim.Muon's algorithm on filters of any shape, same-shaped filters batched."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

from fastres import recipe
from fastres.bench.opcount import count_muon_forms
from fastres.config import TrainConfig
from fastres.config_checks import MUON_NEWTON_SCHULZ
from fastres.errors import ConfigError
from fastres.models import build_model
from fastres.muon import FilterMuon, NewtonSchulz

OPTIONS = {"lr": 0.05, "momentum": 0.95, "weight_decay": 5e-4}
NS_OPTIONS = ((3.4445, -4.775, 2.0315), 5, 1e-7)  # torch.optim.Muon's coefficients, steps, eps
FORMS = ("eager", "compiled", "padded")


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


# --- Newton-Schulz in one graph or one stack (issue 22) -------------------------------------


def _trained(form: str, steps: int = 4, lrs: list[float] | None = None, **options):
    """A width-8 ResNet-18's filters (channels_last) after ``steps`` steps of FilterMuon in
    ``form`` on the same random gradients; with ``lrs``, a 0-dim float64 lr tensor filled with
    them in turn, as GraphStep gives it (fastres.step)."""
    filters = filters_of(channels_last=True)
    optimizer = FilterMuon(filters, newton_schulz=form, **OPTIONS, **options)
    lr = torch.tensor(0.0, dtype=torch.float64)
    for step in range(steps):
        if lrs is not None:
            optimizer.param_groups[0]["lr"] = lr.fill_(lrs[step])
        give_gradients(step, filters, flat_copies(filters))
        optimizer.step()
    return filters


def test_compiled_newton_schulz_gives_the_eager_weights_compiled_once():
    # aot_eager runs the aten operators the graph traced, so the numbers are eager's, bit for
    # bit (inductor's own kernels: the next test); with a tensor lr too, which stays outside
    # the graph (the lr changes every step, the graph does not).
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    lrs = [0.05, 0.03, 0.01, 0.002]
    compiled = _trained("compiled", lrs=lrs, compile_backend=counter)
    assert counter.frame_count == 1, "all 12 shapes in one graph, compiled at the first step only"
    for p, q in zip(_trained("eager", lrs=lrs), compiled, strict=True):
        assert torch.equal(p, q)


def test_inductor_compiles_newton_schulz_to_the_eager_numbers():
    # Inductor keeps fused intermediates in fp32 unless told to round where eager rounds
    # (emulate_precision_casts); then it matches bit for bit. Two shapes, one tall, keep the
    # cold compile to seconds.
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    shapes = [(2, 8, 72), (3, 32, 16)]
    forms = {f: NewtonSchulz(f, shapes, torch.device("cpu"), *NS_OPTIONS) for f in FORMS}
    for _ in range(3):
        stacks = [torch.randn(s) for s in shapes]
        eager = forms["eager"](stacks)
        for a, b in zip(eager, forms["compiled"](stacks), strict=True):
            assert torch.equal(a, b)
    assert counters["stats"]["unique_graphs"] == 1


def test_padded_newton_schulz_equals_each_stack_alone_to_rounding():
    # Zero rows and columns stay zero through every product, so each corner is its matrix's
    # result; the larger products may sum in another order: a few bf16 ulps (2^-8 relative).
    torch.manual_seed(0)
    shapes = [(1, 8, 27), (4, 8, 72), (1, 16, 8), (3, 64, 576), (1, 10, 64)]
    eager = NewtonSchulz("eager", shapes, torch.device("cpu"), *NS_OPTIONS)
    padded = NewtonSchulz("padded", shapes, torch.device("cpu"), *NS_OPTIONS)
    assert padded.padded_shape == (10, 64, 576)
    for _ in range(2):  # the second call reuses the padded stack: its padding stayed zero
        stacks = [torch.randn(s) for s in shapes]
        for a, b in zip(eager(stacks), padded(stacks), strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, rtol=0, atol=8 * 2**-8 * a.abs().max().item())
    x = padded.buffers[0].x
    for first, count, m, n, _ in padded.corners:
        assert not x[first : first + count, m:].any() and not x[first : first + count, :, n:].any()


def test_padded_form_gives_the_eager_weights_to_rounding():
    # Each step's update may differ by a few bf16 ulps of an entry of magnitude <= 1, scaled by
    # lr * sqrt(max(1, out / fan_in)) (<= sqrt(2) here): that bounds the weights' difference.
    steps = 4
    bound = steps * OPTIONS["lr"] * 2**0.5 * 8 * 2**-8
    for p, q in zip(_trained("eager", steps), _trained("padded", steps), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=bound)


def test_padding_launches_one_iteration_for_all_filters_at_five_times_the_arithmetic():
    # The counts BENCHMARKS.md reports (the compiled form's kernels need inductor: not here).
    # Per stack: a copy, norm, clamp and division, then 3 products x 5 iterations.
    eager, padded = count_muon_forms(width=8, forms=("eager", "padded"))
    assert (eager["newton_schulz"], eager["matrix_products"]) == (12 * 19, 12 * 15)
    assert (padded["newton_schulz"], padded["matrix_products"]) == (12 + 3 + 15, 15)
    assert eager["rest"] == padded["rest"] > 0
    assert 5.1 < padded["flops"] / eager["flops"] < 5.2  # shapes scale with the width


def test_the_form_is_a_machine_option():
    config = TrainConfig(optimizer="muon", muon_newton_schulz="padded")
    assert config.recipe_digest() == TrainConfig(optimizer="muon").recipe_digest()
    assert MUON_NEWTON_SCHULZ == FORMS
    with pytest.raises(ConfigError, match="muon_newton_schulz must be one of"):
        TrainConfig(muon_newton_schulz="fused")
    with pytest.raises(ValueError, match="newton_schulz must be one of"):
        FilterMuon(filters_of(channels_last=False), newton_schulz="fused")
    muon = recipe.build_optimizer(build_model("resnet18", width=8), config).parts[1]
    assert muon.newton_schulz == "padded"
