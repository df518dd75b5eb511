"""`fastres bench` and the GPU check as a user sees them: table, JSON, CSV, PNG, skipped and
out-of-memory configurations, bad input, and the GPU check's tiny CPU mode.

Nothing here asserts a time: the numbers of a quick run are not measurements.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from fastres import bench
from fastres.cli import main

from .conftest import REPO, run_cli, run_main

QUICK = ["bench", "--quick", "--threads", "1"]


@pytest.fixture
def keep_threads():
    """In-process runs set torch's thread count; give the rest of the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def table_rows(stdout: str) -> list[list[str]]:
    """The data rows of the printed table, split into cells."""
    lines = stdout.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith("model ") and "baseline img/s" in line
    )
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def test_bench_cli_prints_the_table_and_writes_json_csv_and_plot(tmp_path):
    out = tmp_path / "out"  # a folder that does not exist yet: bench creates it
    res = run_cli(
        *QUICK,
        "--models",
        "resnet18,resnet50",
        "--batch-sizes",
        "2",
        "4",
        "--mode",
        "both",
        "--json",
        str(out / "b.json"),
        "--csv",
        str(out / "b.csv"),
        "--plot",
        str(out / "b.png"),
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    # A progress line per configuration (stderr is not a terminal here).
    assert (
        "[1/16] resnet18 b2 train baseline" in res.stderr
        and "[16/16] resnet50 b4 infer fastres" in res.stderr
    )

    header = next(line for line in res.stdout.splitlines() if "baseline img/s" in line)
    for column in ("model", "batch", "mode", "fastres img/s", "speedup", "peak MB"):
        assert column in header
    rows = table_rows(res.stdout)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (m, b, mode)
        for m in ("resnet18", "resnet50")
        for mode in ("train", "infer")
        for b in ("2", "4")
    ]
    for r in rows:
        base, fast, speedup = float(r[3]), float(r[4]), r[5]
        assert base > 0 and fast > 0
        assert speedup.endswith("x") and float(speedup[:-1]) == pytest.approx(
            fast / base, rel=0.02, abs=0.01
        )

    doc = json.loads((out / "b.json").read_text())
    machine = doc["machine"]
    assert (
        machine["torch"] == torch.__version__
        and machine["threads"] == 1
        and machine["device"] == "cpu"
    )
    assert machine["cpu"] and machine["cpu_count"] >= 1 and machine["gpu"] is None
    records = doc["records"]
    assert {(r["model"], r["batch_size"], r["mode"], r["config"]) for r in records} == {
        (m, b, mode, c)
        for m in ("resnet18", "resnet50")
        for b in (2, 4)
        for mode in ("train", "infer")
        for c in ("baseline", "fastres")
    }
    assert len(records) == 16
    fast_rt = bench.fastres_runtime(torch.device("cpu"))
    for r in records:
        assert set(bench.RECORD_KEYS) <= set(r)
        assert r["status"] == "ok" and r["images_per_s"] > 0 and r["width"] == bench.QUICK_WIDTH
        assert r["threads"] == 1 and r["peak_memory_mb"] is not None
        assert r["cpu_wait"] is None or r["cpu_wait"] >= 0
        assert len(r["repeat_images_per_s"]) == r["repeats"] == 2
        assert min(r["repeat_images_per_s"]) <= r["images_per_s"] * 1.0001
        assert r["images_per_s"] <= max(r["repeat_images_per_s"]) * 1.0001
        if r["config"] == "baseline":
            assert (r["precision"], r["channels_last"], r["compile"]) == ("fp32", False, False)
        else:
            assert (r["precision"], r["channels_last"], r["compile"]) == (
                fast_rt.precision,
                True,
                fast_rt.compile,
            )
    assert doc["settings"]["quick"] is True and doc["settings"]["batch_sizes"] == [2, 4]

    with open(out / "b.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == bench.CSV_KEYS
        rows_csv = list(reader)
    assert len(rows_csv) == 16
    by_key = {(r["model"], r["batch_size"], r["mode"], r["config"]): r for r in records}
    for row in rows_csv:
        rec = by_key[(row["model"], int(row["batch_size"]), row["mode"], row["config"])]
        assert float(row["images_per_s"]) == pytest.approx(rec["images_per_s"])

    png = (out / "b.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(out / "b.png")
    assert image.shape[1] > image.shape[0] > 100  # one panel per model, side by side
    assert f"wrote json: {out / 'b.json'}" in res.stdout


def test_configuration_that_would_not_fit_is_skipped_and_the_sweep_goes_on(
    tmp_path, capsys, keep_threads
):
    small = bench.estimate_memory_bytes("resnet18", 2, "train", "fp32", bench.QUICK_WIDTH)
    huge = bench.estimate_memory_bytes("resnet18", 8192, "train", "bf16", bench.QUICK_WIDTH)
    limit = 3 * small
    assert small < 0.9 * limit < huge, "the estimate must separate the two batch sizes"
    path = tmp_path / "skip.json"
    rc = main(
        [
            *QUICK,
            "--models",
            "resnet18",
            "--batch-sizes",
            "2",
            "8192",
            "4",
            "--mode",
            "train",
            "--mem-limit",
            str(limit / 1e9),
            "--json",
            str(path),
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    records = {(r["batch_size"], r["config"]): r for r in json.loads(path.read_text())["records"]}
    for config in bench.CONFIGS:
        assert records[(2, config)]["status"] == "ok"
        assert records[(4, config)]["status"] == "ok", (
            "the sweep goes on after a skipped configuration"
        )
        skipped = records[(8192, config)]
        assert skipped["status"] == "skipped" and skipped["images_per_s"] is None
        assert (
            skipped["reason"].startswith("skipped: needs ~")
            and "GB allowed by --mem-limit" in skipped["reason"]
        )
    row = next(r for r in table_rows(out) if r[1] == "8192")
    assert row[3:5] == ["skipped", "skipped"]
    assert (
        "not measured / notes:" in out and "resnet18 b8192 train baseline: skipped: needs ~" in out
    )


def test_out_of_memory_is_recorded_and_the_sweep_goes_on(monkeypatch, keep_threads):
    """A CUDA OOM in one configuration (simulated: there is no GPU here) becomes a record."""
    measure = bench.StepBench.measure

    def oom_at_batch_4(self, timing, repeat=None):
        if self.batch_size == 4 and self.runtime.precision != "fp32":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return measure(self, timing, repeat)

    monkeypatch.setattr(bench.StepBench, "measure", oom_at_batch_4)
    torch.set_num_threads(1)
    fast = bench.fastres_runtime(torch.device("cpu"))
    if fast.precision == "fp32":
        pytest.skip("this CPU has no bf16: the fastres configuration is fp32 like the baseline")
    records = bench.sweep(
        ["resnet18"],
        [2, 4, 8],
        ["train"],
        device=torch.device("cpu"),
        width=bench.QUICK_WIDTH,
        timing=bench.QUICK_TIMING,
        progress=False,
    )
    status = {(r["batch_size"], r["config"]): r["status"] for r in records}
    assert status == {
        (2, "baseline"): "ok",
        (2, "fastres"): "ok",
        (4, "baseline"): "ok",
        (4, "fastres"): "oom",
        (8, "baseline"): "ok",
        (8, "fastres"): "ok",
    }
    oom = next(r for r in records if r["status"] == "oom")
    assert oom["reason"] == "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB"
    table = bench.format_table(records)
    row = next(
        line.split()
        for line in table.splitlines()
        if line.startswith("resnet18") and line.split()[1] == "4"
    )
    assert row[4:7] == ["out", "of", "memory"] and row[7] == "-"  # no speedup without both numbers


@pytest.mark.skipif(
    Path("/proc/sys/vm/overcommit_memory").exists()
    and Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1",
    reason=(
        "with overcommit 'always' a huge allocation is granted and the OOM killer ends the process"
    ),
)
def test_real_cpu_allocation_failure_is_reported_as_out_of_memory(tmp_path):
    # 10^9 images of 3 KB cannot be allocated; --mem-limit lifts the estimate's guard so it is
    # tried.
    path = tmp_path / "oom.json"
    res = run_cli(
        *QUICK,
        "--models",
        "resnet18",
        "--batch-sizes",
        "2",
        "1000000000",
        "--mode",
        "infer",
        "--mem-limit",
        "1000000",
        "--json",
        str(path),
        "--no-progress",
    )
    assert res.returncode == 0, res.stderr
    records = {(r["batch_size"], r["config"]): r for r in json.loads(path.read_text())["records"]}
    for config in bench.CONFIGS:
        assert records[(2, config)]["status"] == "ok"
        failed = records[(1000000000, config)]
        assert failed["status"] == "oom" and "can't allocate memory" in failed["reason"]
    assert "out of memory" in res.stdout


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--models", "resnet101"], ["unknown model 'resnet101'", "resnet18, resnet34, resnet50"]),
        (["--models", "resnet18,resnet99"], ["unknown model 'resnet99'"]),
        (["--batch-sizes", "0"], ["batch sizes must be positive, got 0", "--batch-sizes"]),
        (["--batch-sizes", "64", "-4"], ["batch sizes must be positive, got -4"]),
        (["--batch-sizes", "big"], ["batch size 'big' is not an integer"]),
        (["--width", "0"], ["--width must be a positive integer"]),
        (["--mem-limit", "0"], ["--mem-limit must be a positive number"]),
        (["--repeats", "0"], ["repeats >= 1"]),
        (["--mode", "fast"], ["invalid choice: 'fast'"]),
    ],
)
def test_bad_bench_options_get_one_line_and_nothing_runs(args, needles, capsys, keep_threads):
    try:
        rc = main(["bench", "--quick", *args])
    except SystemExit as exc:  # argparse's own errors (invalid choice) exit from the parser
        rc = exc.code
    assert rc == 2
    captured = capsys.readouterr()
    assert "baseline img/s" not in captured.out, "nothing is measured for refused input"
    lines = [line for line in captured.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    for needle in needles:
        assert needle in lines[0]


def test_unwritable_outputs_are_refused_before_the_sweep(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    res = run_cli(
        *QUICK, "--models", "resnet18", "--batch-sizes", "2", "--csv", str(a_file / "b.csv")
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"fastres: error: cannot write --csv {a_file / 'b.csv'}: {a_file} is a file, not a folder; "
        "pass a path in a folder"
    ]
    assert "baseline img/s" not in res.stdout
    res = run_cli(*QUICK, "--models", "resnet18", "--batch-sizes", "2", "--json", str(tmp_path))
    assert res.returncode == 2
    assert (
        res.stderr.strip()
        == f"fastres: error: cannot write --json {tmp_path}: it is a directory; pass a file path"
    )


def test_table_pairs_configs_in_batch_order_with_the_speedup():
    def rec(batch, config, rate, status="ok"):
        r = dict.fromkeys(bench.RECORD_KEYS)
        r.update(
            model="resnet18",
            batch_size=batch,
            mode="train",
            config=config,
            status=status,
            images_per_s=rate,
            peak_memory_mb=100.0,
        )
        return r

    records = [
        rec(128, "baseline", 70.0),
        rec(128, "fastres", 189.0),
        rec(32, "baseline", 60.0),
        rec(32, "fastres", 150.0),
    ]
    rows = table_rows(bench.format_table(records))
    assert [r[1] for r in rows] == ["32", "128"]
    assert rows[0][3:6] == ["60.0", "150.0", "2.50x"] and rows[1][3:6] == ["70.0", "189.0", "2.70x"]


def test_a_rate_measured_on_a_shared_cpu_says_so():
    record = dict.fromkeys(bench.RECORD_KEYS) | {
        "status": "ok",
        "images_per_s": 494.1,
        "cpu_wait": 1.0,
    }
    assert (
        bench.short_result(record)
        == "494.1 img/s, shared CPU: 1.00 threads kept waiting (the rate is the machine's load)"
    )
    assert bench.short_result(record | {"cpu_wait": 0.01}) == "494.1 img/s"
    assert bench.short_result(record | {"cpu_wait": None}) == "494.1 img/s"


def test_memory_estimate_grows_with_the_batch_and_matches_the_known_case():
    # The reference: ResNet-50 at batch 512 in fp32 needs about 20 GB to train.
    big = bench.estimate_memory_bytes("resnet50", 512, "train", "fp32")
    assert 16e9 < big < 30e9
    assert bench.estimate_memory_bytes("resnet50", 512, "train", "bf16") < big
    assert bench.estimate_memory_bytes("resnet50", 512, "infer", "fp32") < big / 3
    sizes = [
        bench.estimate_memory_bytes("resnet18", b, "train", "fp32") for b in (32, 64, 128, 256)
    ]
    assert sizes == sorted(sizes) and sizes[-1] > 2 * sizes[0]


def test_gpu_check_tiny_mode_runs_on_a_machine_with_only_python_torch_and_numpy(tmp_path):
    # The GPU machine has torch and numpy but no fastres install and none of fastres' other
    # dependencies: each is made unimportable, and the repository is reached through PYTHONPATH
    # only.
    for package in ("ffcv", "matplotlib", "tensorboard", "torchvision", "tqdm", "numba"):
        blocker = tmp_path / "block" / package
        blocker.mkdir(parents=True)
        (blocker / "__init__.py").write_text(
            f"raise ImportError('{package} is not installed on the GPU machine')\n"
        )
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "block")}
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.log").read_text().strip().endswith("s)")
    assert (
        doc["schema"] == "fastres-gpu-check/1" and doc["mode"] == "tiny" and doc["complete"] is True
    )
    assert doc["errors"] == [] and doc["elapsed_s"] > 0
    assert doc["machine"]["torch"] == torch.__version__ and doc["machine"]["threads"] == 1
    assert doc["target"] == {"model": "resnet18", "batch_size": 512, "images_per_s": 30000}
    settings = doc["settings"]
    assert settings["compile_backend"] == "eager" and settings["batch_sizes"] == [2, 4]
    records = doc["records"]
    assert all(r["status"] == "ok" and r["images_per_s"] > 0 for r in records), records
    # The eager sweep: every model and batch size, baseline and fastres side by side.
    eager = {(r["model"], r["batch_size"], r["config"]) for r in records if not r["compile"]}
    assert eager == {
        (m, b, c) for m in bench.MODEL_NAMES for b in (2, 4) for c in ("baseline", "fastres_eager")
    }
    for r in records:
        if r["config"] == "baseline":
            assert (r["precision"], r["channels_last"]) == ("fp32", False)
        else:
            assert (r["precision"], r["channels_last"]) == ("bf16", True)
    # Compiled once per model, at one batch size, with the compile time apart from the rate.
    compiled = [r for r in records if r["compile"] and r["config"] == "fastres"]
    assert sorted(r["model"] for r in compiled) == sorted(bench.MODEL_NAMES)
    assert all(
        r["batch_size"] == settings["compile_batch_size"] == 4
        and r["compile_s"] is not None
        and r["compile_s"] >= 0
        for r in compiled
    )
    # CUDA graphs: ResNet-18 compiled in inductor's reduce-overhead mode, at two batch sizes.
    graphs = [r for r in records if r["config"] == "fastres_cudagraphs"]
    assert sorted((r["model"], r["batch_size"]) for r in graphs) == [
        ("resnet18", 2),
        ("resnet18", 4),
    ]
    assert all(r["compile"] and r["compile_s"] is not None for r in graphs)
    assert {r["config"] for r in records} == {
        "baseline",
        "fastres_eager",
        "fastres",
        "fastres_cudagraphs",
    }
    # The data path: augmentation -> step, bf16 and fp16 with GradScaler, next to the bare step.
    paths = {d["precision"]: d for d in doc["data_path"]}
    assert set(paths) == {"bf16", "fp16"}
    assert paths["bf16"]["grad_scaler"] is False and paths["fp16"]["grad_scaler"] is True
    for d in paths.values():
        assert (
            d["status"] == "ok"
            and d["step_images_per_s"] > 0
            and d["augment_step_images_per_s"] > 0
        )
        assert [r["augment"] for r in d["records"]] == [False, True]
        assert all(r["precision"] == d["precision"] for r in d["records"])
    assert (
        "headline: resnet18 b4 train" in res.stdout and "data path fp16 + GradScaler" in res.stdout
    )
    assert "CUDA graphs: resnet18 b4 train" in res.stdout
    # Muon's optimizer step: batched (3 products x 5 iterations per filter shape) against
    # torch.optim.Muon per filter (per filter), the same update either way.
    muon = doc["muon_step"]
    assert muon["status"] == "ok" and (muon["filters"], muon["width"]) == (21, 8)
    assert (muon["muon_batched_matrix_products"], muon["muon_per_filter_matrix_products"]) == (
        15 * 12,
        15 * 21,
    )
    assert muon["muon_max_abs_difference_after_one_step"] < 1e-5
    assert all(
        muon[f"{name}_step_ms"][0] > 0 for name in ("sgd", "muon_batched", "muon_per_filter")
    )
    assert "Muon optimizer step: batched" in res.stdout
    # Without a CIFAR-10 source the end-to-end section says so instead of failing.
    assert doc["end_to_end"]["status"] == "skipped" and "--cifar" in doc["end_to_end"]["reason"]


def test_gpu_check_end_to_end_trains_the_gpu_preset_from_an_archive_of_the_source(
    synthetic_source, tmp_path
):
    # What the GPU machine lacks: ffcv (and fastres is reached through PYTHONPATH only).
    blocker = tmp_path / "block" / "ffcv"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ImportError('ffcv is not installed on the GPU machine')\n"
    )
    archive = tmp_path / "cifar10.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(synthetic_source, arcname="cifar-10-batches-py")
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "block")}
    res = subprocess.run(
        [
            "bash",
            str(REPO / "benchmarks" / "gpu_check.sh"),
            str(out),
            "--tiny",
            "--e2e-only",
            "--cifar",
            str(archive),
            "--e2e-seed",
            "3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["complete"] is True and doc["sections"] == ["end_to_end"] and doc["records"] == []
    e2e = doc["end_to_end"]
    assert e2e["preset"] == "fast" and e2e["status"] == "completed" and e2e["returncode"] == 0
    assert e2e["epochs"] == e2e["epochs_planned"] == 2 and e2e["loader"] == "memory"
    summary = json.loads((out / "e2e" / "summary.json").read_text())
    assert e2e["final_val_acc"] == summary["final_val_acc"] and 0 <= e2e["final_val_acc"] <= 1
    assert e2e["train_time_s"] == summary["train_time_s"] > 0
    assert e2e["compile"] is False and e2e["compiles"] is None and "compile_time_s" in e2e
    assert e2e["cpu_wait"] == summary["cpu_wait"], "whether the run shared its host's CPU"
    time_spent = e2e["time"]
    assert len(time_spent["epoch_time_s"]) == len(time_spent["train_images_per_s"]) == 2
    assert 0 <= time_spent["outside_epochs_s"] < e2e["train_time_s"]
    assert sum(time_spent["epoch_time_s"]) + time_spent["outside_epochs_s"] == pytest.approx(
        e2e["train_time_s"], abs=0.01
    )
    config = json.loads((out / "e2e" / "config.json").read_text())
    assert config["preset"] == "fast" and config["alternate_flip"] and config["tta_translate"] == 1
    assert config["optimizer"] == "muon"
    assert e2e["seed"] == config["seed"] == summary["seed"] == 3, (
        "--e2e-seed picks the seed trained"
    )
    assert "end to end: fast completed after 2/2 epochs" in res.stdout


def test_gpu_check_without_an_output_folder_shows_usage():
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True
    )
    assert res.returncode == 2 and res.stderr.startswith(
        "usage: bash benchmarks/gpu_check.sh OUTDIR"
    )


def test_the_papers_cifar_resnets_are_measured_when_named_at_their_own_width(tmp_path, capsys):
    assert bench.MODEL_NAMES == ("resnet18", "resnet34", "resnet50"), (
        "the default sweep stays comparable"
    )
    torch.set_num_threads(1)
    records = bench.sweep(
        ["resnet20", "resnet18"],
        [2],
        ["infer"],
        device=torch.device("cpu"),
        timing=bench.QUICK_TIMING,
        configs=("baseline",),
        progress=False,
    )
    assert [(r["model"], r["width"], r["status"]) for r in records] == [
        ("resnet20", 16, "ok"),
        ("resnet18", 64, "ok"),
    ]
    out = tmp_path / "b.json"
    res = run_main(
        capsys,
        "bench",
        "--quick",
        "--models",
        "resnet56",
        "--batch-sizes",
        "2",
        "--mode",
        "infer",
        "--json",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert {r["model"] for r in json.loads(out.read_text())["records"]} == {"resnet56"}
    res = run_main(capsys, "bench", "--models", "resnet20", "--width", "7")
    assert res.returncode == 2 and "width 7 does not fit resnet20" in res.stderr
