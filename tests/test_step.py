"""The step a CUDA graph holds (``fastres.step.GraphStep``, ``--cuda-graph on``), run on the
CPU without capture: the same training as today's eager step, to rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastres import recipe
from fastres.bench.opcount import count_step_ops
from fastres.config import TrainConfig
from fastres.models import build_model
from fastres.runtime import Runtime, compile_module
from fastres.schedule import lr_factor
from fastres.step import GraphStep, train_step
from fastres.train import train

STEPS, BATCH = 5, 8


def _train(
    graph: bool,
    optimizer: str,
    ema: float,
    compiled: bool = False,
    batches: list[int] | None = None,
) -> tuple[nn.Module, nn.Module | None, list[float], torch.optim.Optimizer]:
    """A width-8 ResNet-18 trained STEPS steps on fixed random batches, bf16 + channels_last,
    with three parameter groups and a warm-up + cosine schedule (the lr changes every step)."""
    torch.manual_seed(0)
    cfg = TrainConfig(
        width=8,
        optimizer=optimizer,
        ema=ema,
        lr_schedule="cosine",
        epochs=2,
        batch_size=BATCH,
        warmup_epochs=0.5,
        decay_norm_bias=False,
        bn_bias_lr=2.0,
    )
    rt = Runtime(torch.device("cpu"), "cpu", "bf16", compile=compiled, channels_last=True)
    model = rt.place(build_model("resnet18", width=8))
    forward = compile_module(model, backend="aot_eager") if compiled else model
    optimizer_ = recipe.build_optimizer(model, cfg)
    average = recipe.build_ema(model, ema)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer_, lambda s: lr_factor(cfg, s, STEPS))
    criterion = nn.CrossEntropyLoss()
    step = (
        GraphStep(
            forward, model, criterion, optimizer_, rt, batch_size=BATCH, ema=average, ema_decay=ema
        )
        if graph
        else None
    )
    gen = torch.Generator().manual_seed(1)
    losses = []
    for n in batches or [BATCH] * STEPS:
        x = torch.randn(n, 3, 32, 32, generator=gen).to(
            rt.amp_dtype, memory_format=torch.channels_last
        )
        labels = torch.randint(0, 10, (n,), generator=gen)
        if step is not None:
            loss, _ = step(x, labels)
        else:
            loss, _ = train_step(
                forward,
                criterion,
                optimizer_,
                torch.amp.GradScaler("cpu", enabled=False),
                rt,
                x,
                labels,
            )
            if average is not None:
                average.update_parameters(model)
        scheduler.step()
        losses.append(loss.item())
    return model, average, losses, optimizer_


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if p.is_floating_point():
            torch.testing.assert_close(q, p, rtol=0, atol=1e-6, msg=name)
        else:
            assert torch.equal(p, q), name


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_graph_step_trains_as_the_eager_step_does(optimizer, ema):
    eager_model, eager_average, eager_losses, eager_opt = _train(False, optimizer, ema)
    model, average, losses, opt = _train(True, optimizer, ema)
    _assert_same(eager_model, model)
    assert losses == pytest.approx(eager_losses, abs=1e-5)
    if ema:
        _assert_same(eager_average, average)
        assert int(average.n_averaged) == STEPS
    # The checkpoint and the scheduler see today's groups: numbers for lr, SGD's own paths.
    for group, eager_group in zip(opt.param_groups, eager_opt.param_groups, strict=True):
        assert type(group["lr"]) is float
        assert {k: v for k, v in group.items() if k != "params"} == {
            k: v for k, v in eager_group.items() if k != "params"
        }


def test_graph_step_takes_a_last_partial_batch():
    batches = [BATCH, BATCH, BATCH, 3]
    eager_model, *_ = _train(False, "sgd", 0.9, batches=batches)
    model, *_ = _train(True, "sgd", 0.9, batches=batches)
    _assert_same(eager_model, model)


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_graph_step_over_a_compiled_model_trains_as_the_eager_step_does(optimizer):
    torch._dynamo.reset()
    eager_model, eager_average, _, _ = _train(False, optimizer, 0.9, compiled=True)
    torch._dynamo.reset()
    model, average, _, _ = _train(True, optimizer, 0.9, compiled=True)
    _assert_same(eager_model, model)
    _assert_same(eager_average, average)


def test_graph_step_dispatches_fewer_operators_for_sgd_and_the_average():
    eager = count_step_ops(optimizer="sgd", ema=0.99, step="eager", width=8)
    graph = count_step_ops(optimizer="sgd", ema=0.99, step="graph", width=8)
    assert eager["forward_backward"] == graph["forward_backward"]
    # Fused SGD is one operator; the average one foreach per dtype, not one per BatchNorm count.
    assert graph["optimizer_and_average"] < 16 < eager["optimizer_and_average"]
    assert graph["by_op"].get("aten::_fused_sgd_.tensor_lr") == 1
    assert graph["host_ops_with_graph"] == 4  # one lr, two input copies, the replay


def test_cuda_graph_option_trains_on_the_cpu_and_resumes_without_it(
    synthetic_source, tmp_path, monkeypatch
):
    monkeypatch.setenv("FASTRES_CIFAR10", str(synthetic_source))
    base = TrainConfig(
        model="resnet18",
        width=8,
        epochs=1,
        batch_size=256,
        lr=0.05,
        lr_schedule="cosine",
        ema=0.9,
        optimizer="muon",
        precision="fp32",
        loader="memory",
        data_dir=str(tmp_path),
        device="cpu",
    )
    eager = train(base.replace(run_dir=str(tmp_path / "eager")), log=lambda m: None, progress=False)
    graph = train(
        base.replace(run_dir=str(tmp_path / "graph"), cuda_graph="on"),
        log=lambda m: None,
        progress=False,
    )
    # 2000 images in batches of 256: 7 steps (the loaders drop a last partial batch), uncaptured.
    assert (
        eager["cuda_graph_steps"] is None
        and graph["cuda_graph_steps"] == "0 replayed from 0 CUDA graph(s), 7 eager"
    )
    assert graph["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=1e-3)
    assert graph["final_val_acc"] == pytest.approx(eager["final_val_acc"], abs=0.02)
    # A machine option: a run trained with it resumes without it.
    lines: list[str] = []
    resumed = train(
        base.replace(run_dir=str(tmp_path / "graph")), resume=True, log=lines.append, progress=False
    )
    assert resumed["status"] == "completed" and resumed["epochs"] == 1
    assert any("cuda_graph 'on' -> 'off'" in line for line in lines)
