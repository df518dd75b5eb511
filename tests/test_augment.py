import torch
import torchvision.transforms.v2.functional as TF

from fastres.augment import CIFAR10_MEAN, CIFAR10_STD, BatchAugment, Normalizer, random_crop_flip


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)


def test_train_batch_shape_dtype_layout_and_range():
    aug = BatchAugment("cpu", torch.bfloat16, channels_last=True, seed=0)
    out = aug.train(batch())
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)
    lo = min((0 - m) / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True))
    hi = max((1 - m) / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True))
    assert out.float().min() >= lo - 0.05 and out.float().max() <= hi + 0.05
    plain = BatchAugment("cpu", torch.float32, channels_last=False).test(batch())
    assert plain.is_contiguous() and plain.dtype == torch.float32


def test_normalisation_matches_torchvision():
    x = batch(8)
    ours = Normalizer(torch.device("cpu"), torch.float32, channels_last=False)(x)
    ref = TF.normalize(x.permute(0, 3, 1, 2).float() / 255, list(CIFAR10_MEAN), list(CIFAR10_STD))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_every_output_is_a_crop_of_the_padded_image_possibly_mirrored():
    x = batch(32)
    out = random_crop_flip(x, 4, True, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (0, 0, 4, 4, 4, 4))
    offsets, flips = set(), 0
    for i in range(len(x)):
        matches = [
            (dy, dx, f)
            for dy in range(9)
            for dx in range(9)
            for f in (False, True)
            if torch.equal(
                out[i], (lambda w: w.flip(1) if f else w)(padded[i, dy : dy + 32, dx : dx + 32])
            )
        ]
        assert matches, f"image {i} is not a crop of its padded input"
        offsets.add(matches[0][:2])
        flips += matches[0][2]
    assert len(offsets) > 10, "crops should land at many different offsets"
    assert 4 <= flips <= 28, "about half the images should be mirrored"


def test_same_seed_same_batches_different_seed_different():
    x = batch()
    a = BatchAugment("cpu", seed=7)
    b = BatchAugment("cpu", seed=7)
    c = BatchAugment("cpu", seed=8)
    first_a, first_b, first_c = a.train(x).clone(), b.train(x).clone(), c.train(x).clone()
    assert torch.equal(first_a, first_b)
    assert not torch.equal(first_a, first_c)
    assert not torch.equal(first_a, a.train(x)), "successive batches draw new crops"


def test_epoch_reseeding_redraws_an_epochs_crops_exactly():
    # What makes a resumed run bit-exact: the crops of an epoch depend on (seed, epoch, rank) only,
    # not on what the generator drew before.
    x = batch()
    a, b = BatchAugment("cpu", seed=3), BatchAugment("cpu", seed=99)
    a.train(x)
    a.train(x)  # a has drawn two batches, b none
    a.set_epoch(42, 5)
    b.set_epoch(42, 5)
    assert torch.equal(a.train(x), b.train(x))
    b.set_epoch(42, 6)
    a.set_epoch(42, 5)
    assert not torch.equal(a.train(x), b.train(x)), "another epoch draws other crops"
    a.set_epoch(42, 5, rank=1)
    b.set_epoch(42, 5)
    assert not torch.equal(a.train(x), b.train(x)), "data-parallel ranks draw different crops"


def test_augment_off_is_normalisation_only():
    x = batch()
    aug = BatchAugment("cpu", augment=False)
    assert torch.equal(aug.train(x), aug.test(x))


def test_progressive_resizing_downscales_after_the_crop():
    x = batch(16)
    aug = BatchAugment("cpu", torch.bfloat16, channels_last=True, augment=False)
    small = aug.train(x, 16)
    assert small.shape == (16, 3, 16, 16) and small.dtype == torch.bfloat16
    assert small.is_contiguous(memory_format=torch.channels_last)
    full = BatchAugment("cpu", torch.float32, channels_last=False, augment=False).train(x)
    ref = torch.nn.functional.interpolate(full, size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(small.float(), ref, atol=0.03, rtol=0.02)  # bf16 rounding
    assert torch.equal(aug.train(x, 32), aug.train(x)), "the native size is not resampled"


def test_padding_zero_is_flip_only():
    x = batch(32)
    out = random_crop_flip(x, 0, True, torch.Generator().manual_seed(2))
    mirrored = [torch.equal(o, i.flip(1)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 4 <= sum(mirrored) <= 28


def test_flip_only_takes_the_same_images_and_random_draws_as_the_general_crop():
    # Padding 0 skips the gather, but a run must mirror exactly the images it mirrored before
    # (same seed, same numbers across fastres versions), and the random stream must not shift.
    x = batch(64)

    def gather(images, generator, mirror=None):  # the general path, written out for padding 0
        n, h, w, _ = images.shape
        torch.randint(0, 1, (n, 1), generator=generator)
        torch.randint(0, 1, (n, 1), generator=generator)
        if mirror is None:
            mirror = torch.rand((n, 1), generator=generator) < 0.5
        cols = torch.where(
            mirror.reshape(n, 1), w - 1 - torch.arange(w).expand(n, w), torch.arange(w).expand(n, w)
        )
        return images[
            torch.arange(n)[:, None, None], torch.arange(h)[None, :, None], cols[:, None, :]
        ]

    ours, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        assert torch.equal(random_crop_flip(x, 0, True, ours), gather(x, theirs))
    assert torch.equal(torch.rand(4, generator=ours), torch.rand(4, generator=theirs))
    given = torch.rand(64, generator=torch.Generator().manual_seed(1)) < 0.5
    assert torch.equal(random_crop_flip(x, 0, True, ours, given), gather(x, theirs, given))
    assert torch.equal(random_crop_flip(x, 0, False, ours), x)
