"""The time-to-accuracy options: each does what it says on a small case, is off by default,
and resumes bit-identically."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from fastres import TrainConfig, cifar, recipe
from fastres.augment import BatchAugment
from fastres.checkpoint import load as load_checkpoint
from fastres.data import open_data
from fastres.models import build_model
from fastres.rundir import RunDir
from fastres.runtime import resolve_runtime
from fastres.train import evaluate

from .conftest import REPO, run_cli
from .test_reliability import assert_same_weights, metrics_without_timing

EVERY_OPTION = [
    "--ema",
    "0.9",
    "--bn-momentum",
    "0.4",
    "--no-decay-norm-bias",
    "--bn-bias-lr",
    "4",
    "--tta-translate",
    "1",
    "--tta-final-only",
    "--alternate-flip",
    "--whiten-stem",
    "--optimizer",
    "muon",
    "--muon-lr",
    "0.03",
    "--eval-every",
    "2",
]


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", width=8)


def test_ema_is_the_exponential_average_of_the_weights_and_batchnorm_statistics():
    model = small_model()
    ema = recipe.build_ema(model, 0.9)
    history = []
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()
        model(torch.randn(4, 3, 32, 32))  # moves the BatchNorm running statistics
        history.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        ema.update_parameters(model)
    name, stat = "stem.0.weight", "stem.1.running_mean"
    for key in (name, stat):
        expected = history[0][key]  # the first update takes the weights as they are
        for h in history[1:]:
            expected = 0.9 * expected + 0.1 * h[key]
        torch.testing.assert_close(ema.module.state_dict()[key], expected)
    assert recipe.build_ema(model, 0.0) is None


def test_defaults_build_what_fastres_built_before():
    model = small_model()
    groups = recipe.param_groups(model, TrainConfig())
    assert len(groups) == 1 and len(groups[0]["params"]) == len(list(model.parameters()))
    recipe.set_bn_momentum(model, TrainConfig().bn_momentum)
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1}


def test_excluded_parameters_get_no_weight_decay_and_batchnorm_biases_their_own_lr():
    model = small_model()
    config = TrainConfig(lr=0.1, weight_decay=0.5, decay_norm_bias=False, bn_bias_lr=8.0)
    optimizer = torch.optim.SGD(
        recipe.param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay
    )
    bn = model.stem[1]
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.1, 0.8]
    assert any(p is bn.bias for p in optimizer.param_groups[2]["params"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # only weight decay moves anything
    optimizer.step()
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        filters = p.dim() > 1
        assert moved == (filters and bool(before[n].abs().sum())), n
    torch.testing.assert_close(model.stem[0].weight, before["stem.0.weight"] * (1 - 0.1 * 0.5))


def test_muon_steps_the_flattened_filters_and_sgd_the_rest():
    model = small_model().to(memory_format=torch.channels_last)
    config = TrainConfig(lr=0.1, momentum=0.9, weight_decay=5e-4, optimizer="muon", muon_lr=0.02)
    optimizer = recipe.build_optimizer(model, config)
    # The reference: torch's own Muon on 2-D copies of the filters, SGD on everything else.
    named = dict(model.named_parameters())
    filters = {n for n, p in named.items() if p.dim() > 1}
    assert {"stem.0.weight", "fc.weight"} <= filters and len(filters) < len(named)
    flat = {n: named[n].detach().reshape(named[n].shape[0], -1).clone() for n in filters}
    rest = {n: p.detach().clone() for n, p in named.items() if n not in filters}
    ref_muon = torch.optim.Muon(list(flat.values()), lr=0.02, momentum=0.95, weight_decay=5e-4)
    ref_sgd = torch.optim.SGD(list(rest.values()), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        torch.manual_seed(1)
        optimizer.zero_grad()
        model(
            torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
        ).square().mean().backward()
        for n, p in named.items():
            if n in filters:
                flat[n].grad = p.grad.reshape(flat[n].shape)
            else:
                rest[n].grad = p.grad.clone()
        optimizer.step()
        ref_muon.step()
        ref_sgd.step()
    for n, p in named.items():
        expected = flat[n].view(p.shape) if n in filters else rest[n]
        torch.testing.assert_close(p.detach(), expected, msg=n)
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last), (
        "the model keeps its layout"
    )
    # The scheduler sees one optimizer: SGD's groups first (the run's lr), then Muon's.
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.02]
    state = optimizer.state_dict()
    assert len(state["parts"][1]["state"]) == len(filters), (
        "Muon holds momentum for the filters only"
    )
    fresh = recipe.build_optimizer(model, config)
    fresh.load_state_dict(state)
    for group in fresh.param_groups:  # what a scheduler does: after a load too, the parts see it
        group["lr"] = 0.5
    assert [g["lr"] for part in fresh.parts for g in part.param_groups] == [0.5, 0.5]
    assert all(
        torch.equal(a["momentum_buffer"], b["momentum_buffer"])
        for a, b in zip(
            fresh.parts[1].state.values(), optimizer.parts[1].state.values(), strict=True
        )
    )


def test_bn_momentum_is_set_on_every_batchnorm_layer():
    model = small_model()
    recipe.set_bn_momentum(model, 0.4)
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert layers and all(m.momentum == 0.4 for m in layers)


def test_tta_views_are_the_flip_pair_and_one_pixel_shifts_with_mirrors():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    views = recipe.tta_views(x, 1, flip=True)
    assert len(views) == 6 and sum(w for w, _ in views) == pytest.approx(1.0)
    (w0, v0), (w1, v1), (w2, v2), (w3, v3), (w4, v4), (w5, v5) = views
    assert torch.equal(v0, x) and torch.equal(v1, x.flip(3)) and w0 == w1 == 0.25
    assert torch.equal(v2[..., 1:, 1:], x[..., :-1, :-1]), (
        "content moved down and right by one pixel"
    )
    assert torch.equal(v4[..., :-1, :-1], x[..., 1:, 1:]), "content moved up and left by one pixel"
    assert torch.equal(v3, v2.flip(3)) and torch.equal(v5, v4.flip(3)) and w2 == w5 == 0.125
    assert [w for w, _ in recipe.tta_views(x, 0, flip=True)] == [0.5, 0.5]
    assert len(recipe.tta_views(x, 0, flip=False)) == 1


class _Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return torch.zeros(x.shape[0], 10)


class _Data:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.test = [(images, labels)]


def test_evaluation_with_translations_shows_the_model_each_view_once():
    runtime = resolve_runtime(TrainConfig(device="cpu", precision="fp32", channels_last=False))
    augment = BatchAugment(runtime.device, runtime.amp_dtype, channels_last=False)
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    model = _Recorder()
    result = evaluate(
        model, _Data(images, torch.zeros(3, dtype=torch.long)), augment, runtime, translate=2
    )
    x = augment.test(images)
    assert result["images"] == 3 and len(model.seen) == 6
    for seen, (_, view) in zip(model.seen, recipe.tta_views(x, 2, flip=True), strict=True):
        assert torch.equal(seen, view)


def test_resume_with_every_option_on_is_bit_identical(synthetic_data, memory_source, tmp_path):
    args = [
        "train",
        "--preset",
        "quick",
        "--width",
        "8",
        "--batch-size",
        "50",
        "--epochs",
        "3",
        "--train-subset",
        "1000",
        "--test-subset",
        "100",
        "--loader",
        "memory",
        "--deterministic",
        "--no-progress",
        *EVERY_OPTION,
    ]
    reference = tmp_path / "reference"
    res = run_cli(*args, "--run-dir", str(reference))
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastres", *args, "--run-dir", str(run_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not RunDir(run_dir).read_metrics():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR2)
    proc.communicate(timeout=60)
    assert proc.returncode == 140
    res = run_cli("train", "--resume", str(run_dir))
    assert res.returncode == 0 and "resuming" in res.stdout, res.stderr
    assert metrics_without_timing(run_dir) == metrics_without_timing(reference)
    assert_same_weights(run_dir, reference)
    ours, theirs = (load_checkpoint(RunDir(d).last_checkpoint)["ema"] for d in (run_dir, reference))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), (
        "the weight average resumes exactly too"
    )
    # fastres eval reproduces the run's own number: averaged weights, the final views.
    res = run_cli("eval", str(run_dir), "--json")
    assert res.returncode == 0, res.stderr
    assert f'"acc": {RunDir(run_dir).read_summary()["final_val_acc"]}' in res.stdout
    assert '"weights": "averaged"' in res.stdout and '"translate": 1' in res.stdout


def test_alternating_flips_mirror_half_of_each_batch_and_each_image_on_alternate_epochs():
    augment = BatchAugment(
        "cpu",
        torch.float32,
        channels_last=False,
        padding=0,
        seed=5,
        alternate_flip=True,
        dataset_size=2000,
    )
    everyone = torch.arange(2000)
    seen = []
    for epoch in range(3):
        augment.set_epoch(5, epoch)
        seen.append(augment.mirrors(everyone))
    assert 0.45 < seen[0].float().mean() < 0.55
    assert torch.equal(seen[1], ~seen[0]) and torch.equal(seen[2], seen[0]), "each image alternates"
    # In a batch: images whose mirror is due come out mirrored, the others as they were.
    images = torch.randint(0, 256, (256, 32, 32, 3), dtype=torch.uint8)
    indices = torch.randperm(2000)[:256]
    augment.set_epoch(5, 1)
    out = augment.train(images, indices=indices)
    plain = augment.test(images)
    mirrored = torch.tensor([torch.equal(o, p.flip(2)) for o, p in zip(out, plain, strict=True)])
    assert torch.equal(mirrored, augment.mirrors(indices)) and 0.35 < mirrored.float().mean() < 0.65


@pytest.mark.parametrize("loader", ["ffcv", "memory"])
def test_epoch_order_names_the_images_each_batch_yields(loader, synthetic_data, synthetic_source):
    data = open_data(
        loader=loader,
        data_dir=synthetic_data,
        source=synthetic_source,
        batch_size=128,
        device=torch.device("cpu"),
        seed=3,
        train_subset=1000,
        log=lambda m: None,
    )
    split = cifar.load_source(synthetic_source, expect_full=False).train
    order = data.train.epoch_order(2)
    assert len(order) == len(data.train) * 128 and len(set(order.tolist())) == len(order)
    data.train.set_epoch(2)
    start = 0
    for images, labels in data.train:
        idx = order[start : start + len(labels)].numpy()
        assert torch.equal(images.cpu(), torch.from_numpy(split.images[idx]))
        assert torch.equal(labels.cpu(), torch.from_numpy(split.labels[idx]).long())
        start += len(labels)


def test_whitening_init_decorrelates_the_stems_outputs_on_training_patches():
    torch.manual_seed(0)
    # Smooth images: neighbouring pixels and channels strongly correlated, as in photos.
    x = nn.functional.interpolate(torch.randn(64, 3, 8, 8), size=(32, 32), mode="bilinear")
    x = x + 0.5 * x.mean(1, keepdim=True)
    conv = nn.Conv2d(3, 16, 3, bias=False)

    def output_covariance() -> torch.Tensor:
        out = conv(x).detach().transpose(0, 1).reshape(16, -1)[:8]
        out = out - out.mean(1, keepdim=True)
        return out @ out.T / out.shape[1]

    before = output_covariance()
    off = ~torch.eye(8, dtype=torch.bool)
    corr = before / torch.sqrt(torch.outer(before.diag(), before.diag()))
    assert corr[off].abs().max() > 0.3, "random filters on smooth images give correlated outputs"
    recipe.whiten_stem(conv, x)
    after = output_covariance()
    assert after[off].abs().max() < 0.02 and torch.allclose(after.diag(), torch.ones(8), atol=0.05)
    torch.testing.assert_close(
        conv.weight[8:16], -conv.weight[:8]
    )  # each direction and its negative


def test_eval_every_skips_the_test_pass_between_evaluations_and_always_tests_the_last_epoch(
    synthetic_data, memory_source, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fastres.report import write_report

    run_dir = tmp_path / "study" / "quick" / "seed0"
    res = run_cli(
        "train",
        "--preset",
        "quick",
        "--width",
        "8",
        "--batch-size",
        "100",
        "--epochs",
        "5",
        "--train-subset",
        "1000",
        "--test-subset",
        "200",
        "--loader",
        "memory",
        "--no-progress",
        "--eval-every",
        "2",
        "--run-dir",
        str(run_dir),
    )
    assert res.returncode == 0, res.stderr
    run = RunDir(run_dir)
    rows = run.read_metrics()
    evaluated = [r["epoch"] for r in rows if r["val_acc"] is not None]
    assert evaluated == [2, 4, 5] and all(
        r["val_images"] == 0 for r in rows if r["epoch"] not in evaluated
    )
    assert res.stdout.count("not evaluated") == 2
    summary = run.read_summary()
    assert summary["final_val_acc"] == rows[-1]["val_acc"]
    assert summary["best_val_acc"] == max(rows[e - 1]["val_acc"] for e in evaluated)
    tb = EventAccumulator(str(run.tensorboard))
    tb.Reload()
    assert [e.step for e in tb.Scalars("acc/val")] == evaluated
    assert [e.step for e in tb.Scalars("acc/train")] == [1, 2, 3, 4, 5]
    # The report and its curves read such a run like any other.
    write_report(tmp_path / "study")
    assert (tmp_path / "study" / "val_acc.png").stat().st_size > 0
    assert f"{100 * summary['final_val_acc']:.2f}" in (tmp_path / "study" / "report.md").read_text()
