"""The held-out validation split (``--val-split N``): which training images it holds.

The split depends on the training labels and N only, never on the run's seed, so every seed
of a study (and both loaders, and every DDP rank) holds out the same images. It is
class-balanced: each class gives its share of N in proportion to its count, and within a
class the images come from a fixed permutation, so a larger N holds out a superset.
"""

from __future__ import annotations

import hashlib

import numpy as np

SPLIT_SEED = 20151210  # fixed, independent of every run's --seed: the split is part of the recipe


def held_out(labels: np.ndarray, n: int) -> np.ndarray:
    """Sorted indices into ``labels`` of the ``n`` images held out for validation."""
    labels = np.asarray(labels)
    if not 0 < n < len(labels):
        raise ValueError(f"a validation split of {n} images out of {len(labels)}")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    by_class = perm[np.argsort(labels[perm], kind="stable")]  # each class in permutation order
    classes, counts = np.unique(labels, return_counts=True)
    rank = np.empty(len(labels))  # position of each image in its class's permutation order
    start = 0
    for count in counts:
        rank[by_class[start : start + count]] = np.arange(count)
        start += count
    share = (rank + 0.5) / counts[np.searchsorted(classes, labels)]
    # Images with the smallest share of their class first; ties go by the permutation.
    chosen = perm[np.lexsort((np.arange(len(perm)), share[perm]))[:n]]
    return np.sort(chosen)


def kept(size: int, held: np.ndarray) -> np.ndarray:
    """Sorted indices of the ``size`` images that are not in ``held``."""
    mask = np.ones(size, dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask)


def digest(held: np.ndarray) -> str:
    """A short hash of the held-out indices: recorded in the run directory and its summary,
    so a resumed run (or a report) can tell whether two runs held out the same images."""
    return hashlib.sha256(np.asarray(held, dtype=np.int64).tobytes()).hexdigest()[:16]
