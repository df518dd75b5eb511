"""Training and test batches: uint8 NHWC images and int64 labels, on the training device.

Two loaders with one interface:

* ``FFCVBatches`` reads the betons written by ``prepare-data`` with FFCV's ``Loader``
  (the default; ffcv is imported only here).
* ``MemoryBatches`` keeps the whole uint8 data set in device memory, read straight from the
  CIFAR-10 source: for machines where ffcv cannot be installed.

Augmentation is not done here: it happens in batches on the device (``augment.py``).
In sequential order both loaders yield identical batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from . import cifar, prepare, split
from .config import TrainConfig
from .errors import FastresError
from .ffcv_compat import ffcv_available, keep_torch_threads

Batch = tuple[torch.Tensor, torch.Tensor]


class FFCVBatches:
    """FFCV's Loader over one beton, yielding device tensors.

    FFCV reuses its output buffers: a yielded batch is valid until the next one is drawn,
    so callers that keep a batch must clone it (the training loop consumes it at once).
    """

    def __init__(
        self,
        path: Path,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        num_workers: int,
        subset: int = 0,
        distributed: bool = False,
        indices: np.ndarray | None = None,
    ) -> None:
        self._threads = torch.get_num_threads()
        with keep_torch_threads():
            from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
            from ffcv.loader import Loader, OrderOption
            from ffcv.transforms import Squeeze, ToDevice, ToTensor

        image_pipe: list = [SimpleRGBImageDecoder(), ToTensor()]
        label_pipe: list = [IntDecoder(), ToTensor(), Squeeze(1)]
        if device.type == "cuda":
            # FFCV copies on its own CUDA streams from pinned memory; on CPU there is nothing to
            # move.
            image_pipe.append(ToDevice(device, non_blocking=True))
            label_pipe.append(ToDevice(device, non_blocking=True))
        self.loader = Loader(
            str(path),
            batch_size=batch_size,
            num_workers=num_workers,
            order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL,
            seed=seed,
            drop_last=drop_last,
            distributed=distributed,
            indices=indices if indices is not None else np.arange(subset) if subset else None,
            pipelines={"image": image_pipe, "label": label_pipe},
            batches_ahead=2,
        )
        # FFCV sets torch's thread count to its worker count on import and on every epoch.
        torch.set_num_threads(self._threads)
        self.num_images = len(self.loader.indices)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use the order of ``epoch`` (0-based), e.g. after a resume."""
        self.loader.next_epoch = epoch

    @property
    def dataset_size(self) -> int:
        """One past the largest data-set index it yields (with --val-split the indices have
        gaps)."""
        return int(self.loader.indices.max()) + 1

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The data-set indices of ``epoch``'s images (this rank's), in the order its batches
        yield them: FFCV's own traversal order, which it derives from (seed, epoch)."""
        order = np.asarray(self.loader.traversal_order.sample_order(epoch))
        return torch.from_numpy(order[: len(self) * self.loader.batch_size].astype(np.int64))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        it = iter(self.loader)
        torch.set_num_threads(self._threads)
        for images, labels in it:
            yield images, labels.long()


class MemoryBatches:
    """The whole uint8 split resident on the device; batches are index gathers. ``indices``
    (data-set indices, as FFCV's Loader takes them) picks the images it yields, e.g. those
    a validation split leaves; positions in an epoch's order map through it, as FFCV's do."""

    def __init__(
        self,
        split: cifar.Split,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        subset: int = 0,
        rank: int = 0,
        world_size: int = 1,
        indices: np.ndarray | None = None,
    ) -> None:
        size = subset or len(split)
        self.images = torch.from_numpy(split.images[:size]).to(device)
        self.labels = torch.from_numpy(split.labels[:size]).to(device)
        self.indices = (
            None
            if indices is None
            else torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(device)
        )
        n = size if indices is None else len(indices)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.next_epoch = 0
        self.sampler = None
        if world_size > 1:
            # The same sharding (and padding) as FFCV's distributed mode, which uses this sampler.
            self.sampler = DistributedSampler(
                range(n),
                num_replicas=world_size,
                rank=rank,
                shuffle=shuffle,
                seed=seed,
                drop_last=False,
            )
        self.num_images = len(self.sampler) if self.sampler is not None else n

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = epoch

    @property
    def dataset_size(self) -> int:
        return self.images.shape[0]

    def __len__(self) -> int:
        full, rest = divmod(self.num_images, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def _order(self, epoch: int) -> torch.Tensor | None:
        positions = self._positions(epoch)
        if self.indices is None:
            return positions
        return self.indices if positions is None else self.indices[positions]

    def _positions(self, epoch: int) -> torch.Tensor | None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            return torch.tensor(list(self.sampler), device=self.images.device)
        if self.shuffle:
            # Same recipe as FFCV's RANDOM order: a permutation from default_rng(seed + epoch).
            order = torch.from_numpy(
                np.random.default_rng(self.seed + epoch).permutation(self.num_images)
            )
            return order.to(self.images.device)
        return None

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The data-set indices of ``epoch``'s images (this rank's), in the order its batches
        yield them."""
        order = self._order(epoch)
        if order is None:
            order = torch.arange(self.num_images, device=self.images.device)
        return order[: len(self) * self.batch_size].cpu() if self.drop_last else order.cpu()

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.next_epoch
        self.next_epoch += 1
        order = self._order(epoch)
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, self.num_images)
            if order is None:
                yield self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                yield self.images[idx], self.labels[idx]


@dataclass
class DataSource:
    train: FFCVBatches | MemoryBatches
    test: FFCVBatches | MemoryBatches
    loader: str  # "ffcv" or "memory"
    data_hash: str  # manifest hash (ffcv) or source checksum prefix (memory)
    description: str
    val: FFCVBatches | MemoryBatches | None = None  # the held-out split (--val-split), else None
    val_indices: np.ndarray | None = None  # the held-out images' data-set indices


def choose_loader(requested: str, log=print) -> str:
    if requested == "ffcv" and not ffcv_available():
        log(
            "notice: ffcv is not installed (or does not import); using --loader memory (the data "
            "set stays in device memory)"
        )
        return "memory"
    return requested


def open_config_data(
    config: TrainConfig, device: torch.device, log=print, *, rank: int = 0, world_size: int = 1
) -> DataSource:
    """Open the data ``config`` trains on (or a finished run of it evaluates), as ``rank`` of
    ``world_size`` processes: its loader resolved first (``choose_loader``)."""
    loader = choose_loader(config.loader, log=log)
    return open_data(
        loader=loader,
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        device=device,
        seed=config.seed,
        num_workers=config.num_workers,
        train_subset=config.train_subset,
        test_subset=config.test_subset,
        shuffle=config.shuffle,
        rank=rank,
        world_size=world_size,
        val_split=config.val_split,
        log=log,
    )


def open_data(
    *,
    loader: str,
    data_dir: str | Path,
    batch_size: int,
    device: torch.device,
    seed: int,
    num_workers: int = 0,
    train_subset: int = 0,
    test_subset: int = 0,
    eval_batch_size: int = 500,
    shuffle: bool = True,
    source: str | Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    val_split: int = 0,
    log=print,
) -> DataSource:
    """Open the training and test batches for one run (``loader`` already resolved).

    ``batch_size`` is global: with ``world_size`` > 1 each rank reads its own shard of the
    training set in batches of ``batch_size // world_size``. Every rank reads the whole test set,
    and the whole validation split: ``val_split`` > 0 holds out that many of the (first
    ``train_subset``) training images, chosen by ``split.held_out`` from the labels alone.
    """
    if batch_size % world_size:
        raise FastresError(
            f"batch size {batch_size} does not divide over {world_size} processes: pass a "
            "--batch-size "
            f"that is a multiple of {world_size} (the batch size is global, split evenly between "
            "processes)"
        )
    shared = {
        "batch_size": batch_size,
        "device": device,
        "seed": seed,
        "train_subset": train_subset,
        "test_subset": test_subset,
        "eval_batch_size": eval_batch_size,
        "shuffle": shuffle,
        "world_size": world_size,
        "val_split": val_split,
    }
    if loader == "ffcv":
        return _open_ffcv(data_dir, num_workers=num_workers, **shared)
    return _open_memory(data_dir, source, rank=rank, **shared)


def _open_ffcv(
    data_dir: str | Path,
    *,
    batch_size: int,
    device: torch.device,
    seed: int,
    num_workers: int,
    train_subset: int,
    test_subset: int,
    eval_batch_size: int,
    shuffle: bool,
    world_size: int,
    val_split: int,
) -> DataSource:
    """``open_data`` with FFCV: the betons in ``data_dir``, verified against their manifest."""
    manifest = prepare.verify_betons(data_dir)
    counts = {s: manifest["files"][s]["count"] for s in prepare.BETONS}
    beton = prepare.beton_path(data_dir, "train")
    held, keep = _checked_split(
        counts, lambda: _beton_labels(beton), train_subset, test_subset, batch_size, val_split
    )
    workers = num_workers or (8 if device.type == "cuda" else 1)
    common = {"device": device, "seed": seed, "num_workers": workers}
    train = FFCVBatches(
        beton,
        batch_size // world_size,
        shuffle=shuffle,
        drop_last=True,
        subset=train_subset,
        distributed=world_size > 1,
        indices=keep,
        **common,
    )
    test = FFCVBatches(
        prepare.beton_path(data_dir, "test"),
        eval_batch_size,
        shuffle=False,
        drop_last=False,
        subset=test_subset,
        **common,
    )
    val = (
        None
        if held is None
        else FFCVBatches(
            beton, eval_batch_size, shuffle=False, drop_last=False, indices=held, **common
        )
    )
    return DataSource(
        train,
        test,
        "ffcv",
        prepare.manifest_hash(manifest),
        f"FFCV betons in {data_dir}",
        val,
        held,
    )


def _open_memory(
    data_dir: str | Path,
    source: str | Path | None,
    *,
    batch_size: int,
    device: torch.device,
    seed: int,
    rank: int,
    train_subset: int,
    test_subset: int,
    eval_batch_size: int,
    shuffle: bool,
    world_size: int,
    val_split: int,
) -> DataSource:
    """``open_data`` in device memory: the CIFAR-10 source (``source``, or found from
    ``data_dir``), read whole."""
    src = cifar.locate_source(source, data_dir)
    if src is None:
        raise FastresError(
            "--loader memory reads the CIFAR-10 source, and none was found (looked at "
            f"{cifar.searched_locations(data_dir)}): "
            f"set {cifar.ENV_VAR} or put '{cifar.FOLDER}' in --data-dir"
        )
    data = cifar.load_source(src, expect_full=False)
    counts = {"train": len(data.train), "test": len(data.test)}
    held, keep = _checked_split(
        counts, lambda: data.train.labels, train_subset, test_subset, batch_size, val_split
    )
    train = MemoryBatches(
        data.train,
        batch_size // world_size,
        device,
        shuffle=shuffle,
        seed=seed,
        drop_last=True,
        subset=train_subset,
        rank=rank,
        world_size=world_size,
        indices=keep,
    )
    test = MemoryBatches(
        data.test,
        eval_batch_size,
        device,
        shuffle=False,
        seed=seed,
        drop_last=False,
        subset=test_subset,
    )
    val = (
        None
        if held is None
        else MemoryBatches(
            data.train,
            eval_batch_size,
            device,
            shuffle=False,
            seed=seed,
            drop_last=False,
            subset=train_subset,
            indices=held,
        )
    )
    return DataSource(
        train,
        test,
        "memory",
        cifar.source_checksum(src)[:16],
        f"CIFAR-10 source {src}, in device memory",
        val,
        held,
    )


def _checked_split(
    counts: dict[str, int],
    labels: Callable[[], np.ndarray],
    train_subset: int,
    test_subset: int,
    batch_size: int,
    val_split: int,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Both loaders' one check of the subsets and split against the data set's ``counts``,
    then the (held-out, kept) training images' data-set indices: (None, None) without
    --val-split. ``labels`` (the training labels) is read only for a split."""
    _check_subsets(counts, train_subset, test_subset, batch_size, val_split)
    held = _held_out(labels(), train_subset, val_split) if val_split else None
    keep = None if held is None else split.kept(train_subset or counts["train"], held)
    return held, keep


def _held_out(labels: np.ndarray, train_subset: int, val_split: int) -> np.ndarray | None:
    """The validation split's data-set indices among the first ``train_subset`` images, or None."""
    if not val_split:
        return None
    return split.held_out(labels[: train_subset or len(labels)], val_split)


def _beton_labels(path: Path) -> np.ndarray:
    """The training labels, read from the beton's metadata table (no image is decoded)."""
    with keep_torch_threads():
        from ffcv.reader import Reader

    reader = Reader(str(path))
    return np.asarray(
        reader.metadata[reader.metadata.dtype.names[reader.field_names.index("label")]]
    )


def _check_subsets(
    counts: dict[str, int], train_subset: int, test_subset: int, batch_size: int, val_split: int = 0
) -> None:
    for name, subset in (("train", train_subset), ("test", test_subset)):
        if subset > counts[name]:
            raise FastresError(
                f"--{name}-subset {subset} is larger than the {counts[name]} {name} images"
            )
    pool = train_subset or counts["train"]
    if val_split >= pool:
        raise FastresError(
            f"--val-split {val_split} leaves none of the {pool} training images to train on: "
            f"pass a --val-split below {pool} (e.g. {pool // 10})"
        )
    n_train = pool - val_split
    if batch_size > n_train:
        raise FastresError(
            f"batch size {batch_size} is larger than the {n_train} training images: pass "
            f"--batch-size <= {n_train}"
        )
