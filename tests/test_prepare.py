import json
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch

from fastres import FastresError, cifar, prepare_data
from fastres.data import FFCVBatches, MemoryBatches, open_data
from fastres.prepare import BETONS, MANIFEST, verify_betons

CPU = torch.device("cpu")


def read_all(path, n_expected, batch_size=1000):
    loader = FFCVBatches(
        path, batch_size, CPU, shuffle=False, seed=0, drop_last=False, num_workers=1
    )
    images, labels = [], []
    for x, y in loader:
        images.append(x.clone())  # FFCV reuses its buffers
        labels.append(y.clone())
    images, labels = torch.cat(images).numpy(), torch.cat(labels).numpy()
    assert len(labels) == n_expected
    return images, labels


def test_betons_hold_the_source_exactly(synthetic_source, synthetic_data):
    src = cifar.load_source(synthetic_source, expect_full=False)
    manifest = json.loads((synthetic_data / MANIFEST).read_text())
    for split, data in (("train", src.train), ("test", src.test)):
        images, labels = read_all(synthetic_data / BETONS[split], len(data))
        assert np.array_equal(images, data.images) and np.array_equal(labels, data.labels)
        assert manifest["files"][split]["count"] == len(data)
        assert (
            manifest["files"][split]["label_counts"]
            == np.bincount(data.labels, minlength=10).tolist()
        )
    assert manifest["source"]["sha256"] == cifar.source_checksum(synthetic_source)


@pytest.mark.realdata
def test_real_cifar10_betons_match_the_pickled_batches(real_source, real_data):
    src = cifar.load_source(real_source)
    assert (len(src.train), len(src.test)) == (50_000, 10_000)
    for split, data in (("train", src.train), ("test", src.test)):
        images, labels = read_all(real_data / BETONS[split], len(data), batch_size=5000)
        assert np.array_equal(labels, data.labels)
        assert np.array_equal(images, data.images)
    assert np.bincount(src.test.labels).tolist() == [1000] * 10
    # Published statistics of this copy: first training image's class, mean pixel value.
    assert abs(src.train.images.mean() / 255 - np.mean([0.4914, 0.4822, 0.4465])) < 1e-3


def test_second_call_is_a_noop_force_and_source_change_rebuild(tmp_path, synthetic_source):
    logs = []
    prepare_data(tmp_path, synthetic_source, allow_small=True, log=logs.append)
    beton = tmp_path / BETONS["train"]
    mtime = beton.stat().st_mtime_ns
    prepare_data(tmp_path, synthetic_source, allow_small=True, log=logs.append)
    assert beton.stat().st_mtime_ns == mtime and "nothing to do" in logs[-1]
    prepare_data(tmp_path, synthetic_source, allow_small=True, force=True, log=logs.append)
    assert beton.stat().st_mtime_ns != mtime
    changed = shutil.copytree(synthetic_source, tmp_path / "changed" / cifar.FOLDER)
    batch = pickle.loads((changed / "test_batch").read_bytes(), encoding="latin1")
    batch["data"][0, 0] ^= 1
    (changed / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    prepare_data(tmp_path, changed, allow_small=True, log=logs.append)
    assert any("source changed" in line for line in logs)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files are left behind"


def test_tar_gz_source_and_search_order(tmp_path, synthetic_source, monkeypatch):
    archive = tmp_path / "data" / cifar.ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(synthetic_source, arcname=cifar.FOLDER)
    monkeypatch.delenv(cifar.ENV_VAR, raising=False)
    assert cifar.locate_source(None, tmp_path / "data") == archive
    from_tar = cifar.load_source(archive, expect_full=False)
    from_dir = cifar.load_source(synthetic_source, expect_full=False)
    assert np.array_equal(from_tar.train.images, from_dir.train.images)
    monkeypatch.setenv(cifar.ENV_VAR, str(synthetic_source))
    assert cifar.locate_source(None, tmp_path / "data") == synthetic_source
    assert cifar.locate_source(archive, tmp_path / "data") == archive


def test_partial_source_is_refused_without_allow_small(tmp_path, synthetic_source):
    with pytest.raises(FastresError, match="holds 2000 train images, CIFAR-10 has 50000"):
        prepare_data(tmp_path, synthetic_source, log=lambda m: None)
    assert not (tmp_path / MANIFEST).exists()


def test_training_refuses_tampered_betons(tmp_path, synthetic_source):
    prepare_data(tmp_path, synthetic_source, allow_small=True, log=lambda m: None)
    beton = tmp_path / BETONS["test"]
    data = bytearray(beton.read_bytes())
    data[-10] ^= 0xFF
    beton.write_bytes(bytes(data))
    with pytest.raises(FastresError, match="does not match the SHA-256"):
        verify_betons(tmp_path)
    beton.write_bytes(bytes(data[:1000]))
    with pytest.raises(FastresError, match="truncated or replaced.*prepare-data"):
        verify_betons(tmp_path)
    beton.unlink()
    with pytest.raises(FastresError, match="is missing"):
        verify_betons(tmp_path)
    prepare_data(tmp_path, synthetic_source, allow_small=True, log=lambda m: None)  # repairs
    verify_betons(tmp_path)


def test_ffcv_and_memory_loaders_yield_identical_sequential_batches(
    synthetic_source, synthetic_data
):
    kwargs = {"batch_size": 128, "device": CPU, "seed": 0, "shuffle": False, "eval_batch_size": 128}
    ffcv = open_data(loader="ffcv", data_dir=synthetic_data, **kwargs)
    mem = open_data(loader="memory", data_dir=synthetic_data, source=synthetic_source, **kwargs)
    assert isinstance(mem.train, MemoryBatches)
    for split in ("train", "test"):
        a = [(x.clone(), y.clone()) for x, y in getattr(ffcv, split)]
        b = [(x.clone(), y.clone()) for x, y in getattr(mem, split)]
        assert len(a) == len(b) >= 1
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert xa.dtype == xb.dtype == torch.uint8 and xa.shape == xb.shape
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_shuffled_epochs_are_permutations_in_the_same_order_for_both_loaders(
    synthetic_source, synthetic_data
):
    kwargs = {"batch_size": 100, "device": CPU, "seed": 5, "shuffle": True}
    ffcv = open_data(loader="ffcv", data_dir=synthetic_data, **kwargs).train
    mem = open_data(
        loader="memory", data_dir=synthetic_data, source=synthetic_source, **kwargs
    ).train
    epochs = []
    for loader in (ffcv, mem):
        loader.set_epoch(3)
        epochs.append(torch.cat([y.clone() for _, y in loader]))
    assert torch.equal(epochs[0], epochs[1])
    assert sorted(epochs[0].tolist()) != epochs[0].tolist()
    ffcv.set_epoch(4)
    assert not torch.equal(torch.cat([y.clone() for _, y in ffcv]), epochs[0])


def test_batch_larger_than_dataset_is_refused(synthetic_data):
    with pytest.raises(
        FastresError, match="batch size 5000 is larger than the 2000 training images"
    ):
        open_data(loader="ffcv", data_dir=synthetic_data, batch_size=5000, device=CPU, seed=0)


def test_ffcv_imports_without_compiling_numbas_dictionary():
    """ffcv's import built a numba typed dict for two constants, which compiled numba's dict
    machinery: seconds at the start of every run. fastres imports ffcv with a plain dict in
    its place, ffcv reads it the same, and numba keeps its own Dict for everyone else."""
    import subprocess
    import sys

    code = (
        "from fastres.ffcv_compat import ffcv_available\n"
        "assert ffcv_available()\n"
        "import numba.typed, numba.typed.typeddict, ffcv.fields.rgb_image as rgb\n"
        "print(rgb.IMAGE_MODES == {'jpg': 0, 'raw': 1}, type(rgb.IMAGE_MODES).__name__,\n"
        "      numba.typed.Dict is numba.typed.typeddict.Dict, "
        "len(numba.typed.typeddict._make_dict.signatures))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "dict", "True", "0"], out.stdout
