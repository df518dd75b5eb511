"""Data loading: fastres' FFCV loader + device-side augmentation vs a torchvision DataLoader.

Both read the same training images at the same batch size; one round is one epoch (after
an untimed warm-up epoch). The torchvision side is what a plain script does: PIL images,
RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor + Normalize in 2 persistent workers.
The two run in one session and the summary prints their ratio.
"""

from __future__ import annotations

import pytest

from fastres import bench


@pytest.mark.bench
def test_data_loading(benchmark, settings, device, data, results):
    benchmark.group = "data loading"

    def repeat(run_one, repeats):
        benchmark.pedantic(run_one, rounds=repeats, iterations=1, warmup_rounds=0)

    fast = bench.measure_ffcv_loader(
        data.betons,
        settings.data_batch,
        device=device,
        subset=settings.data_subset,
        repeats=settings.data_repeats,
        repeat=repeat,
    )
    # pytest-benchmark times one target per test; the torchvision loader is timed by the same
    # epoch protocol right after, in the same process.
    plain = bench.measure_torchvision_loader(
        data.source,
        settings.data_batch,
        device=device,
        subset=settings.data_subset,
        repeats=settings.data_repeats,
    )
    speedup = fast["images_per_s"] / plain["images_per_s"]
    results["data"].append({"fastres": fast, "torchvision": plain, "speedup": speedup})
    benchmark.extra_info.update(
        {
            "images_per_s": fast["images_per_s"],
            "torchvision_images_per_s": plain["images_per_s"],
            "speedup": speedup,
            "batch_size": settings.data_batch,
            "images_per_epoch": fast["images_per_epoch"],
            "torchvision_workers": plain["workers"],
        }
    )
    assert fast["images_per_epoch"] == plain["images_per_epoch"] > 0
