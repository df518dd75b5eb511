"""End to end: a real training epoch (FFCV loader, augmentation, step, bookkeeping) against
the pure train-step rate of the same model and batch, measured in the same session.

``kept`` = epoch images/s / step images/s shows how much of the step rate the whole loop
keeps; the last epoch counts (the first includes FFCV's pipeline compilation). The round
pytest-benchmark times is the whole ``fastres.train.train`` call, evaluation included.
"""

from __future__ import annotations

import pytest

from fastres import bench


@pytest.mark.bench
def test_epoch_vs_step(benchmark, settings, device, data, results, tmp_path):
    benchmark.group = "end to end"
    result = bench.measure_end_to_end(
        "resnet18", settings.e2e_batch, data.betons, tmp_path / "run", device=device, width=settings.width,
        train_subset=settings.e2e_subset, epochs=settings.e2e_epochs, test_subset=settings.e2e_test_subset,
        timing=settings.timing,
        run_training=lambda fn: benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0))
    results["e2e"].append(result)
    benchmark.extra_info.update({k: result[k] for k in (
        "epoch_images_per_s", "step_images_per_s", "kept", "model", "width", "batch_size", "train_images",
        "precision", "channels_last", "compile")})
    assert len(result["epoch_images_per_s_all"]) == settings.e2e_epochs
