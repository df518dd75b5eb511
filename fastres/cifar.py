"""Finding and reading the CIFAR-10 source (the official python-pickle layout).

The pickled batches are read directly rather than through ``torchvision.datasets.CIFAR10``,
whose MD5 check rejects faithful copies that are not byte-identical to the official archive.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import socket
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FastresError

ENV_VAR = "FASTRES_CIFAR10"
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGES_PER_BATCH = 10_000


@dataclass(frozen=True)
class Split:
    """One split in memory: ``images`` uint8 (N, 32, 32, 3) HWC, ``labels`` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Cifar10:
    train: Split
    test: Split
    source: Path


def locate_source(source: str | Path | None, data_dir: str | Path) -> Path | None:
    """The first CIFAR-10 copy in the documented search order, or None if none is found.

    Order: ``source`` argument, ``$FASTRES_CIFAR10``, ``<data_dir>/cifar-10-batches-py``,
    ``<data_dir>/cifar-10-python.tar.gz``. An explicitly named path that does not exist is
    an error, not a reason to look elsewhere.
    """
    for origin, value in (("--source", source), (ENV_VAR, os.environ.get(ENV_VAR) or None)):
        if value is None:
            continue
        path = Path(value).expanduser()
        if not path.exists():
            raise FastresError(
                f"CIFAR-10 source {path} (from {origin}) does not exist: point it at a "
                f"'{FOLDER}' folder or a '{ARCHIVE}' file"
            )
        if path.is_dir() and not (path / TEST_BATCH).exists() and (path / FOLDER).is_dir():
            path = path / FOLDER  # accept the folder that contains cifar-10-batches-py
        return path
    for candidate in (Path(data_dir) / FOLDER, Path(data_dir) / ARCHIVE):
        if candidate.exists():
            return candidate
    return None


def searched_locations(data_dir: str | Path) -> str:
    return f"--source, ${ENV_VAR}, {Path(data_dir) / FOLDER}, {Path(data_dir) / ARCHIVE}"


def download(data_dir: str | Path, log: Callable[[str], None] = print) -> Path:
    """Download the official archive with torchvision into ``data_dir``; clear error offline."""
    from torchvision.datasets.utils import download_url

    data_dir = Path(data_dir)
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    log(f"CIFAR-10 not found locally ({searched_locations(data_dir)}); downloading {url}")
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        download_url(url, str(data_dir), filename=ARCHIVE, md5="c58f30108f718f92721af3b95e74349a")
    except Exception as exc:
        (data_dir / ARCHIVE).unlink(missing_ok=True)
        raise FastresError(
            f"no CIFAR-10 found (looked at {searched_locations(data_dir)}) and the download failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}): "
            f"pass --source PATH or set {ENV_VAR} to a '{FOLDER}' folder or '{ARCHIVE}'"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    return data_dir / ARCHIVE


def source_files(path: Path) -> list[Path]:
    """The files whose bytes define the source (for checksums)."""
    if path.is_file():
        return [path]
    return [path / name for name in (*TRAIN_BATCHES, TEST_BATCH)]


def source_checksum(path: Path) -> str:
    """SHA-256 over the source's batch files (or the archive), in a fixed order."""
    digest = hashlib.sha256()
    for f in source_files(path):
        try:
            with open(f, "rb") as fh:
                digest.update(f.name.encode())
                digest.update(hashlib.file_digest(fh, "sha256").digest())
        except FileNotFoundError:
            raise FastresError(
                f"CIFAR-10 source {path} is missing {f.name}: restore it or point --source at a "
                "complete copy"
            ) from None
    return digest.hexdigest()


def _read_batches(path: Path) -> dict[str, bytes]:
    """The raw bytes of every batch file, from a folder or from the tar.gz archive."""
    names = (*TRAIN_BATCHES, TEST_BATCH)
    if path.is_dir():
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise FastresError(
                f"CIFAR-10 source {path} is missing {', '.join(missing)}: restore it or point "
                "--source at a complete copy"
            )
        return {n: (path / n).read_bytes() for n in names}
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise FastresError(
                    f"archive {path} has no {', '.join(missing)}: download it again or pass a "
                    f"complete '{FOLDER}' folder"
                )
            return {n: tar.extractfile(members[n]).read() for n in names}
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise FastresError(
            f"{path} is not a readable {ARCHIVE} ({exc}): download it again or pass the extracted "
            f"'{FOLDER}' folder"
        ) from None


# The only globals a CIFAR-10 batch names: numpy's array reconstruction (numpy 1 spells its
# module numpy.core, numpy 2 numpy._core) and, in files pickled by Python 3, the codec that
# turns the array's latin-1 text back into bytes. Any other global could run code.
_RECONSTRUCT = np.ndarray(0).__reduce__()[0]
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class UnsafePickle(FastresError):
    """A batch file names a global that CIFAR-10 batches never hold; nothing of it ran."""


class _BatchUnpickler(pickle.Unpickler):
    """Reads plain containers, numbers, strings and numpy arrays; refuses every other global
    before it is imported or called, so a file from an untrusted copy cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickle(f"{module}.{name}") from None


def _unpickle(raw: bytes) -> object:
    return _BatchUnpickler(io.BytesIO(raw), encoding="latin1").load()


def _parse_batch(raw: bytes, name: str, where: Path) -> Split:
    try:
        batch = _unpickle(raw)
        data, labels = batch["data"], batch["labels"]
        data = np.asarray(data)
        labels = np.asarray(labels)
    except UnsafePickle as exc:
        raise UnsafePickle(
            f"{where}/{name} names the Python global {exc}, which a CIFAR-10 batch never holds: "
            "refused "
            "unread (unpickling it could run code); restore the file from the official archive"
        ) from None
    except Exception as exc:  # truncated pickles raise a zoo of exception types
        raise FastresError(
            f"{where}/{name} is truncated or not a CIFAR-10 batch ({type(exc).__name__}): restore "
            "the file from the official archive"
        ) from None
    if labels.dtype.kind not in "iu":  # NaN, 3.7, "cat" or True are no class index
        raise FastresError(
            f"{where}/{name} has labels of type {labels.dtype}, expected integers 0..9: it is not "
            "CIFAR-10"
        )
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise FastresError(
            f"{where}/{name} has images of shape {data.shape} and type {data.dtype}, expected (N, "
            "3072) uint8: "
            "it is not a CIFAR-10 python batch"
        )
    if labels.shape != (data.shape[0],):
        raise FastresError(f"{where}/{name} has {labels.size} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise FastresError(
            f"{where}/{name} has labels outside 0..9 (found {labels.min()}..{labels.max()}): it is "
            "not CIFAR-10"
        )
    # Rows are channel-planar (1024 R, 1024 G, 1024 B); store HWC as FFCV and PIL expect.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels.astype(np.int64))


def load_source(path: str | Path, *, expect_full: bool = True) -> Cifar10:
    """Read and validate a CIFAR-10 source: a ``cifar-10-batches-py`` folder or the tar.gz."""
    path = Path(path)
    raw = _read_batches(path)
    train_parts = [_parse_batch(raw[n], n, path) for n in TRAIN_BATCHES]
    test = _parse_batch(raw[TEST_BATCH], TEST_BATCH, path)
    train = Split(
        np.concatenate([p.images for p in train_parts]),
        np.concatenate([p.labels for p in train_parts]),
    )
    if expect_full:
        for split, n, expected in (("train", len(train), 50_000), ("test", len(test), 10_000)):
            if n != expected:
                raise FastresError(
                    f"{path} holds {n} {split} images, CIFAR-10 has {expected}: the copy is "
                    "incomplete"
                )
    return Cifar10(train=train, test=test, source=path)


def write_source(path: str | Path, train: Split, test: Split) -> Path:
    """Write arrays in the official python-pickle layout (for tests and small custom sets)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    def dump(name: str, split: Split) -> None:
        rows = split.images.transpose(0, 3, 1, 2).reshape(len(split), -1)
        batch = {
            "batch_label": name,
            "labels": split.labels.tolist(),
            "data": rows,
            "filenames": [f"{name}_{i}.png" for i in range(len(split))],
        }
        with open(path / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)

    for i, chunk in enumerate(np.array_split(np.arange(len(train)), len(TRAIN_BATCHES))):
        dump(TRAIN_BATCHES[i], Split(train.images[chunk], train.labels[chunk]))
    dump(TEST_BATCH, test)
    with open(path / "batches.meta", "wb") as f:
        pickle.dump(
            {
                "label_names": list(CLASSES),
                "num_cases_per_batch": IMAGES_PER_BATCH,
                "num_vis": 3072,
            },
            f,
            protocol=2,
        )
    return path
