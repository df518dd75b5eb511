"""The data path: fastres' FFCV loader with device-side augmentation, and a plain torchvision
``DataLoader`` doing the same augmentation in worker processes, each timed per epoch."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .. import cifar
from ..augment import CIFAR10_MEAN, CIFAR10_STD, BatchAugment
from ..data import open_data
from .step import fastres_runtime
from .timing import synchronize

# repeat(run_one, repeats) runs the timed epochs; pytest-benchmark's pedantic in the suites.
EpochRepeat = Callable[[Callable[[], object], int], object]


def measure_ffcv_loader(
    data_dir: str | Path,
    batch_size: int,
    *,
    device: torch.device,
    subset: int = 0,
    repeats: int = 3,
    seed: int = 0,
    repeat: EpochRepeat | None = None,
) -> dict[str, Any]:
    """Images/s of fastres' FFCV loader plus its device-side augmentation, per epoch.

    Each repeat is one epoch over ``subset`` training images; the first epoch (FFCV
    compiles its pipeline with numba then) is warm-up and not timed.
    """
    runtime = fastres_runtime(device)
    data = open_data(
        loader="ffcv",
        data_dir=data_dir,
        batch_size=batch_size,
        device=device,
        seed=seed,
        train_subset=subset,
        log=lambda m: None,
    )
    augment = BatchAugment(
        device, runtime.amp_dtype, channels_last=runtime.channels_last, seed=seed
    )

    def epoch() -> int:
        seen = 0
        for images, _labels in data.train:
            augment.train(images)
            seen += images.shape[0]
        return seen

    return time_epochs(epoch, device, repeats, repeat) | {
        "loader": "ffcv",
        "augmentation": "fastres BatchAugment (crop+flip+normalise on the device)",
        "batch_size": batch_size,
        "workers": data.train.loader.num_workers,
        "precision": runtime.precision,
        "channels_last": runtime.channels_last,
    }


class _PILImages:
    """CIFAR-10 arrays served as PIL images, like torchvision.datasets.CIFAR10 does."""

    def __init__(self, images: Any, labels: Any, transform: Callable[[Any], Any]) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def measure_torchvision_loader(
    source: str | Path,
    batch_size: int,
    *,
    device: torch.device,
    subset: int = 0,
    repeats: int = 3,
    workers: int = 2,
    seed: int = 0,
    repeat: EpochRepeat | None = None,
) -> dict[str, Any]:
    """Images/s of a plain torchvision DataLoader (persistent workers, PIL transforms).

    RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor + Normalize over the same training
    images, moved to ``device`` in the loop as a plain script would. First epoch is warm-up.
    """
    # torchvision only here: the benchmark of the data path it is compared with.
    from torchvision import transforms

    data = cifar.load_source(source, expect_full=False)
    n = subset or len(data.train)
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    dataset = _PILImages(data.train.images[:n], data.train.labels[:n], transform)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        generator=gen,
    )

    def epoch() -> int:
        seen = 0
        for images, labels in loader:
            images.to(device, non_blocking=True)
            labels.to(device, non_blocking=True)
            seen += images.shape[0]
        return seen

    try:
        result = time_epochs(epoch, device, repeats, repeat)
    finally:
        loader = None  # dropping the last reference shuts the persistent workers down
    return result | {
        "loader": "torchvision",
        "augmentation": "RandomCrop(32, 4) + RandomHorizontalFlip + Normalize (PIL, in workers)",
        "batch_size": batch_size,
        "workers": workers,
    }


def time_epochs(
    epoch: Callable[[], int], device: torch.device, repeats: int, repeat: EpochRepeat | None = None
) -> dict[str, Any]:
    """One untimed warm-up epoch, then ``repeats`` synchronised epochs; the median rate."""
    t0 = time.perf_counter()
    epoch()
    synchronize(device)
    warmup_s = time.perf_counter() - t0
    rates: list[float] = []
    images = 0

    def run_one() -> None:
        nonlocal images
        synchronize(device)
        t0 = time.perf_counter()
        images = epoch()
        synchronize(device)
        rates.append(images / (time.perf_counter() - t0))

    if repeat is None:
        for _ in range(repeats):
            run_one()
    else:
        repeat(run_one, repeats)
    return {
        "images_per_s": statistics.median(rates),
        "repeat_images_per_s": rates,
        "images_per_epoch": images,
        "repeats": len(rates),
        "warmup_epoch_s": warmup_s,
    }
