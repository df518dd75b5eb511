"""Training state to and from disk, atomically, verified and safe to load.

A checkpoint holds only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint can never run code. It also holds a
SHA-256 digest of its own content (``checksum``), checked on load, so a file damaged on disk
is refused instead of resuming from wrong weights.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import FastresError
from .files import atomic_copy, atomic_write_bytes, writing
from .rundir import BEST, LAST

FORMAT = "fastres-checkpoint"
VERSION = 1


def capture_rng() -> dict[str, Any]:
    """Every global RNG the training loop touches, as tensors and plain values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if (
        "cuda" in state
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])


def content_digest(state: Any) -> str:
    """SHA-256 of a state tree: every tensor's dtype, shape and bytes, and every plain value,
    in a fixed order, so the same content gives the same digest before saving and after loading."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"T{t.dtype}{tuple(value.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy())  # the raw bytes, whatever the dtype
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode())
                feed(value[key])
        elif isinstance(value, list | tuple):
            digest.update(f"L{len(value)}".encode())
            for item in value:
                feed(item)
        else:
            digest.update(f"V{value!r}".encode())

    feed(state)
    return digest.hexdigest()


def save(state: dict[str, Any], path: Path) -> None:
    """Write atomically with the digest of its content: a kill or a full disk at any moment
    keeps the previous checkpoint, and an error names the file and the cause."""
    state = {"format": FORMAT, "version": VERSION, **state}
    state["checksum"] = content_digest(state)
    # Serialised in memory first: torch's own file writer reports a full disk only as
    # "file write failed", a plain write says which limit was hit.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getbuffer())


def recorded_config(path: Path) -> dict[str, Any] | None:
    """The config a checkpoint was trained with, read without loading its tensors (memory-
    mapped); None when the file cannot be read so (``load`` then names what is wrong)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - damaged or foreign: load() says which, in one line
        return None
    config = state.get("config") if isinstance(state, dict) else None
    return config if isinstance(config, dict) else None


def load(
    path: Path, map_location: torch.device | str = "cpu", log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Load and verify a checkpoint; a clear FastresError for anything that is not one, or one
    whose content no longer matches its checksum. ``log`` hears about checkpoints written
    before checksums were stored (they load unverified)."""
    if not path.exists():
        raise FastresError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
    ) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise FastresError(
            f"checkpoint {path} is truncated or not a fastres checkpoint ({detail})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FastresError(
            f"{path} is not a fastres checkpoint (it loads, but has no fastres training state)"
        )
    if state.get("version") != VERSION:
        raise FastresError(
            f"checkpoint {path} has format version {state.get('version')}, this fastres reads "
            f"{VERSION}"
        )
    checksum = state.pop("checksum", None)
    if checksum is None:
        if log is not None:
            log(f"note: {path} was written before fastres stored checksums; it loads unverified")
    elif content_digest(state) != checksum:
        other = BEST if path.name != BEST else LAST
        raise FastresError(
            f"checkpoint {path} is damaged: its content no longer matches the checksum written "
            "with it; "
            f"use the run's other checkpoint ({other}: fastres eval RUN --checkpoint "
            f"{Path(other).stem}; "
            f"to resume from it, copy it over {LAST}) or train the run again"
        )
    return state


def to_cpu(state: Any) -> Any:
    """A deep copy with every tensor on the CPU: a snapshot training can run on from."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(to_cpu(v) for v in state)
    return state


class BackgroundWriter:
    """Writes checkpoints on a thread, so the training loop only pays for the CPU snapshot.

    On a GPU an epoch of ResNet-18 takes seconds, and a synchronous write of its state would be
    a visible part of it (BENCHMARKS.md, "Checkpoint cost"). One write is in flight at a time;
    ``wait`` blocks until it is on disk.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastres-checkpoint")
        self._pending: Future | None = None

    def snapshot(self, state: dict[str, Any]) -> dict[str, Any]:
        """A CPU copy of ``state`` to write, once the previous write is on disk (its error, if
        any, is raised here). This is the part the training loop waits for."""
        self.wait()
        return to_cpu(state)

    def write(self, snapshot: dict[str, Any], path: Path, best: Path | None) -> None:
        """Write a snapshot to ``path`` (and copy it to ``best``) in the background."""
        self.wait()
        self._pending = self._pool.submit(self._write, snapshot, path, best)

    @staticmethod
    def _write(state: dict[str, Any], path: Path, best: Path | None) -> None:
        save(state, path)
        if best is not None:
            # best.pt equals last.pt when it is written: a copy, not a second serialisation.
            atomic_copy(path, best)

    def wait(self) -> None:
        """Block until the last submitted checkpoint is on disk; re-raise its error if any."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
