"""End to end: `fastres train` / `fastres eval` as a user runs them, and the run directory."""

import json
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fastres import TrainConfig, train
from fastres.rundir import METRIC_KEYS, TB_TAGS, RunDir
from fastres.schedule import lr_factor

from .conftest import run_cli, run_main

TINY = ["--width", "8", "--batch-size", "100", "--no-progress"]


@pytest.mark.realdata
@pytest.mark.slow
def test_train_on_real_cifar10_learns_and_writes_the_run_directory(real_data, tmp_path):
    run_dir = tmp_path / "run"
    res = run_cli(
        "train",
        "--preset",
        "quick",
        "--width",
        "8",
        "--epochs",
        "3",
        "--train-subset",
        "10000",
        "--test-subset",
        "2000",  # each epoch's evaluation of all 10,000 would cost more than its training
        "--batch-size",
        "128",
        "--lr",
        "0.1",
        "--warmup-epochs",
        "0.5",
        "--data-dir",
        str(real_data),
        "--eval-every",
        "1",
        "--run-dir",
        str(run_dir),
        "--no-progress",
    )
    assert res.returncode == 0, res.stderr
    run = RunDir(run_dir)
    summary = run.read_summary()
    assert summary["status"] == "completed" and summary["epochs"] == 3
    assert summary["final_val_acc"] > 0.35, summary
    for key in ("best_val_acc", "final_val_acc"):
        assert 0 <= summary[key] <= 1
    for key in (
        "train_time_s",
        "images_per_s",
        "params",
        "device",
        "precision",
        "versions",
        "data_hash",
    ):
        assert summary[key], key
    assert summary["versions"]["ffcv"] == "1.0.2" and summary["loader"] == "ffcv"
    config = run.read_config()
    assert (
        config["width"] == 8 and config["preset"] == "quick" and config["run_dir"] == str(run_dir)
    )
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["train_res"] for r in rows] == [16, 16, 32], (
        "quick's progressive resizing, ending at 32"
    )
    assert all(set(METRIC_KEYS) <= set(r) for r in rows)
    # Where each epoch's training time went (a CPU measures each part exactly): the parts
    # add up to the training part of the epoch, which is inside the whole epoch.
    for r in rows:
        parts = r["loop_time_s"]
        assert set(parts) == {"load", "augment", "step", "other"} and min(parts.values()) >= 0, (
            parts
        )
        assert parts["step"] > 0 and parts["load"] > 0
        assert (
            0.9 * r["epoch_train_s"]
            <= sum(parts.values())
            <= r["epoch_train_s"]
            <= r["epoch_time_s"]
        ), r
    # How many of its threads waited for a CPU, per epoch and over the run (time-weighted).
    assert all(r["cpu_wait"] >= 0 for r in rows)
    weighted = sum(r["cpu_wait"] * r["epoch_time_s"] for r in rows) / sum(
        r["epoch_time_s"] for r in rows
    )
    assert summary["cpu_wait"] == pytest.approx(weighted)
    assert run.last_checkpoint.exists() and run.best_checkpoint.exists()
    assert f"logs in {run_dir}" in res.stdout
    shares = re.search(
        r"training time by part of the loop: load ([\d.]+)%, augment ([\d.]+)%, step ([\d.]+)%, "
        r"other ([\d.]+)%",
        res.stdout,
    )
    assert (
        shares
        and sum(map(float, shares.groups())) == pytest.approx(100, abs=0.3)
        and float(shares[3]) > 50
    )

    # TensorBoard's own reader finds the same scalars as metrics.jsonl.
    acc = EventAccumulator(str(run.tensorboard))
    acc.Reload()
    for key, tag in TB_TAGS.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)

    # fastres eval reproduces the final accuracy from the saved weights, evaluating as the run
    # did (quick evaluates with flip TTA), and --no-tta evaluates the plain predictions.
    res = run_cli("eval", str(run_dir), "--json")
    assert res.returncode == 0, res.stderr
    evaluated = json.loads(res.stdout.strip().splitlines()[-1])
    assert evaluated["tta"] is True and config["eval_tta"] is True
    assert evaluated["acc"] == pytest.approx(summary["final_val_acc"], abs=0.002)
    res = run_cli("eval", str(run_dir), "--no-tta", "--json")
    plain = json.loads(res.stdout.strip().splitlines()[-1])
    assert res.returncode == 0 and plain["tta"] is False and plain["acc"] > 0.35


def test_run_directory_is_never_overwritten_and_config_reruns(
    synthetic_data, tmp_path, capsys, monkeypatch
):
    run_dir = tmp_path / "run"
    # A relative --data-dir, as users type it; the run records it absolute.
    args = [
        "train",
        "--preset",
        "cosine",
        *TINY,
        "--epochs",
        "1",
        "--data-dir",
        synthetic_data.name,
    ]
    assert run_cli(*args, "--run-dir", str(run_dir), cwd=synthetic_data.parent).returncode == 0
    assert json.loads((run_dir / "config.json").read_text())["data_dir"] == str(
        synthetic_data.resolve()
    )
    before = (run_dir / "metrics.jsonl").read_text()
    # So its weights can be evaluated from any directory, or against data elsewhere.
    evaluated = run_cli("eval", str(run_dir), "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    acc = json.loads(evaluated.stdout.strip().splitlines()[-1])["acc"]
    assert acc == pytest.approx(
        json.loads((run_dir / "summary.json").read_text())["final_val_acc"], abs=0.002
    )
    # The refusals run in this process: they stop before training, and a new interpreter would
    # only add seconds of start-up.
    missing = run_main(capsys, "eval", str(run_dir), "--data-dir", str(tmp_path / "nowhere"))
    assert (
        missing.returncode != 0
        and "prepare-data" in missing.stderr
        and "Traceback" not in missing.stderr
    )
    monkeypatch.chdir(synthetic_data.parent)
    again = run_main(capsys, *args, "--run-dir", str(run_dir))
    assert again.returncode != 0
    assert "already holds a run" in again.stderr and "--resume" in again.stderr
    assert (run_dir / "metrics.jsonl").read_text() == before
    # --config re-runs the recorded recipe in a new directory.
    rerun = run_cli(
        "train",
        "--config",
        str(run_dir / "config.json"),
        "--run-dir",
        str(tmp_path / "rerun"),
        "--no-progress",
    )
    assert rerun.returncode == 0, rerun.stderr
    recorded, repeated = (
        json.loads((d / "config.json").read_text()) for d in (run_dir, tmp_path / "rerun")
    )
    assert {k: v for k, v in recorded.items() if k != "run_dir"} == {
        k: v for k, v in repeated.items() if k != "run_dir"
    }


def test_python_api_trains_with_the_memory_loader(
    synthetic_source, synthetic_data, tmp_path, monkeypatch
):
    monkeypatch.setenv("FASTRES_CIFAR10", str(synthetic_source))
    cfg = TrainConfig(
        model="resnet18",
        width=8,
        epochs=2,
        batch_size=100,
        lr=0.05,
        lr_schedule="cosine",
        loader="memory",
        data_dir=str(tmp_path),
        run_dir=str(tmp_path / "api"),
    )
    summary = train(cfg, log=lambda m: None, progress=False)
    assert summary["loader"] == "memory" and summary["epochs"] == 2
    assert summary["final_val_acc"] > 0.5, "the synthetic classes differ by colour: easy to learn"


def test_missing_ffcv_falls_back_to_the_memory_loader_with_a_notice(synthetic_source, tmp_path):
    shadow = tmp_path / "shadow" / "ffcv"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('ffcv is broken here')\n")
    res = run_cli(
        "train",
        *TINY,
        "--epochs",
        "1",
        "--data-dir",
        str(tmp_path / "nodata"),
        "--run-dir",
        str(tmp_path / "run"),
        env={"PYTHONPATH": str(shadow.parent), "FASTRES_CIFAR10": str(synthetic_source)},
    )
    assert res.returncode == 0, res.stderr
    assert "using --loader memory" in res.stdout
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["loader"] == "memory"


def test_lr_schedules_have_the_documented_shape():
    spe = 10
    base = TrainConfig(epochs=20)
    multistep = [lr_factor(base, e * spe, spe) for e in (0, 9, 10, 14, 15, 19)]
    assert multistep == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = base.replace(lr_schedule="cosine")
    assert lr_factor(cos, 0, spe) == 1 and lr_factor(cos, 100, spe) == pytest.approx(0.5)
    assert lr_factor(cos, 199, spe) < 0.001
    warm = cos.replace(warmup_epochs=2)
    assert lr_factor(warm, 0, spe) == pytest.approx(1 / 20) and lr_factor(warm, 19, spe) == 1
    assert lr_factor(base.replace(lr_schedule="none"), 150, spe) == 1
    linear = warm.replace(lr_schedule="linear")
    assert lr_factor(linear, 0, spe) == pytest.approx(1 / 20) and lr_factor(linear, 19, spe) == 1
    assert lr_factor(linear, 20, spe) == 1 and lr_factor(linear, 110, spe) == pytest.approx(0.5)
    assert lr_factor(linear, 199, spe) == pytest.approx(1 / 180)


def test_compile_stats_count_compiles_and_notice_the_recompile_limit():
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    from fastres.runtime import compile_stats

    torch._dynamo.reset()
    counters.clear()
    # Past the limit dynamo silently runs the function eagerly: the stats must say so.
    with torch._dynamo.config.patch(recompile_limit=2, automatic_dynamic_shapes=False):
        compiled = torch.compile(torch.nn.Linear(4, 2), backend="eager")
        compiled(torch.randn(3, 4))
        first = compile_stats()
        assert (
            first["compiles"] == 1
            and first["compile_time_s"] > 0
            and not first["recompile_limit_hit"]
        )
        for batch in (5, 6, 7):  # each new batch size is a recompile
            compiled(torch.randn(batch, 4))
        stats = compile_stats()
    assert stats["compiles"] == 2 and stats["recompile_limit_hit"]
    torch._dynamo.reset()
    counters.clear()


def test_compiled_training_gets_one_static_graph_per_input_size():
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    from fastres.models import build_model
    from fastres.runtime import compile_module, compile_stats

    torch._dynamo.reset()
    counters.clear()
    model = compile_module(build_model("resnet18", width=8), backend="eager")
    for size in (16, 20, 24, 28, 32, 16):  # progressive resizing's sizes, and one seen before
        model(torch.randn(2, 3, size, size))
    stats = compile_stats()
    # Dynamo left alone would compile twice (16, then one shape-generic graph for the rest).
    assert stats["compiles"] == 5 and not stats["recompile_limit_hit"]
    torch._dynamo.reset()
    counters.clear()


def test_a_run_that_finished_without_learning_ends_with_a_note_saying_so():
    from fastres.run_summary import chance_note

    stuck = {"final_val_acc": 0.1, "final_train_loss": 2.3026}
    note = chance_note(stuck, 10_000)
    assert note.startswith("note: this run did not learn: 10.00% is what guessing one of 10")
    assert "final train loss 2.3026; ln 10 = 2.3026" in note and "try a lower --lr" in note
    assert chance_note({"final_val_acc": 0.12, "final_train_loss": 2.0}, 10_000) is None
    assert chance_note({"final_val_acc": 0.12, "final_train_loss": 2.0}, 100) is not None
    assert chance_note({"final_val_acc": None}, 10_000) is None  # never evaluated
