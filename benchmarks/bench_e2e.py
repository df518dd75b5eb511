"""End to end: a real training epoch (FFCV loader, augmentation, step, bookkeeping) against
the pure train-step rate of the same model and batch, measured in the same session.

``kept`` = epoch images/s / step images/s shows how much of the step rate the whole loop
keeps; the last epoch counts (the first includes FFCV's pipeline compilation). Full mode
measures the full-width model and quick's width 16 at batch 256, each 3 times (the median
counts; the spread says how far one measurement can be trusted). On a CPU the epoch also
accounts for its own time (load, augment, step, other, measured inside the same epoch), so
the step's share of the loop has no drift between two measurements in it; and the step inside
the loop is timed against the same step on a held batch, the two alternating in blocks within
one epoch (``step_kept``: 1.0 = the loop does not slow the step). The round
pytest-benchmark times is the whole ``fastres.train.train`` call, evaluation included.
"""

from __future__ import annotations

import statistics

import pytest

from fastres import bench


@pytest.mark.bench
def test_epoch_vs_step(e2e_case, benchmark, settings, device, data, results, tmp_path):
    width, batch, subset = e2e_case
    benchmark.group = "end to end"
    repeats = []
    for r in range(settings.e2e_repeats):
        # Each repeat measures both rates again, so drift between them shows up as spread.
        repeats.append(
            bench.measure_end_to_end(
                "resnet18",
                batch,
                data.betons,
                tmp_path / f"run{r}",
                device=device,
                width=width,
                train_subset=subset,
                epochs=settings.e2e_epochs,
                test_subset=settings.e2e_test_subset,
                timing=settings.timing,
                run_training=(
                    lambda fn: benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
                )
                if r == 0
                else None,
            )
        )
    kept = sorted(x["kept"] for x in repeats)
    result = dict(
        min(repeats, key=lambda x: abs(x["kept"] - statistics.median(kept))),
        kept=statistics.median(kept),
        kept_all=[x["kept"] for x in repeats],
        kept_spread=kept[-1] - kept[0],
        cpu_wait_all=[x["cpu_wait"] for x in repeats],
    )
    if all(
        x["loop_shares"] for x in repeats
    ):  # the CPU's in-epoch account, per part: median of the repeats
        result["loop_shares_median"] = {
            part: statistics.median(x["loop_shares"][part] for x in repeats)
            for part in repeats[0]["loop_shares"]
        }
        result["step_share_all"] = [x["loop_shares"]["step"] for x in repeats]
    if (
        device.type == "cpu"
    ):  # the step inside the loop against the step alone, alternating in blocks
        result["step_kept_all"] = {}
        for size in settings.e2e_sizes:
            inside = [
                bench.measure_step_in_loop(
                    "resnet18",
                    batch,
                    data.betons,
                    tmp_path / f"inloop{size}-{r}",
                    device=device,
                    width=width,
                    train_subset=subset,
                    size=size,
                    block=settings.e2e_block,
                )
                for r in range(settings.e2e_repeats)
            ]
            assert all(x["loop_steps"] and x["alone_steps"] for x in inside), inside
            result["step_kept_all"][size] = [x["step_kept"] for x in inside]
        result["step_kept"] = {
            size: statistics.median(v) for size, v in result["step_kept_all"].items()
        }
    results["e2e"].append(result)
    benchmark.extra_info.update(
        {
            k: result[k]
            for k in (
                "epoch_images_per_s",
                "step_images_per_s",
                "kept",
                "kept_all",
                "kept_spread",
                "model",
                "width",
                "batch_size",
                "train_images",
                "precision",
                "channels_last",
                "compile",
                "loop_shares_median",
                "step_share_all",
                "step_kept",
                "step_kept_all",
                "cpu_wait_all",
            )
            if k in result
        }
    )
    assert all(len(x["epoch_images_per_s_all"]) == settings.e2e_epochs for x in repeats)
    if device.type == "cpu":  # the epoch's parts account for its training time
        assert all(
            x["loop_shares"] and 0.9 <= sum(x["loop_shares"].values()) <= 1.0001 for x in repeats
        ), repeats
