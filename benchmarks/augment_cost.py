"""What the training augmentation costs per batch on the device: ``BatchAugment.train`` on a
synthetic uint8 batch (256 images, bf16 channels_last out) for quick's recipe at 32, 24 and
16 px, the crop + coin flip, the test transform, and the flip-only select against the
gather it replaced. Median and range of 7 x 20 calls, in ms.

    .venv/bin/python benchmarks/augment_cost.py
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import torch

from fastres.augment import BatchAugment, random_crop_flip

BATCH = 256


def timed(f: Callable[[], object], repeats: int = 7, calls: int = 20) -> list[float]:
    """[median, min, max] of ``repeats`` means over ``calls`` calls, in ms, after 5 warm-ups."""
    for _ in range(5):
        f()
    means = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            f()
        means.append((time.perf_counter() - t) / calls * 1000)
    return [round(statistics.median(means), 2), round(min(means), 2), round(max(means), 2)]


def flip_by_gather(images: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """The flip-only path as it was: one gather over row and column indices."""
    n, h, w, _ = images.shape
    cols = torch.arange(w).expand(n, w)
    cols = torch.where(mirror.reshape(n, 1), w - 1 - cols, cols)
    return images[torch.arange(n)[:, None, None], torch.arange(h)[None, :, None], cols[:, None, :]]


def main() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (BATCH, 32, 32, 3), dtype=torch.uint8)
    indices = torch.randperm(50_000)[:BATCH]
    mirror = torch.rand(BATCH) < 0.5
    out = {
        "flip_only_gather_ms": timed(lambda: flip_by_gather(images, mirror)),
        "flip_only_select_ms": timed(lambda: random_crop_flip(images, 0, True, None, mirror)),
    }
    quick = {"padding": 0, "alternate_flip": True}
    for label, options, size in [
        ("quick_32", quick, 32),
        ("quick_24", quick, 24),
        ("quick_16", quick, 16),
        ("pad4_coin_32", {"padding": 4}, 32),
    ]:
        augment = BatchAugment(
            "cpu", torch.bfloat16, channels_last=True, seed=0, dataset_size=50_000, **options
        )
        out[label + "_ms"] = timed(lambda a=augment, s=size: a.train(images, s, indices))
    test = BatchAugment("cpu", torch.bfloat16, channels_last=True, seed=0)
    out["test_32_ms"] = timed(lambda: test.test(images))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
