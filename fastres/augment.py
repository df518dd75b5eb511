"""Batched augmentation on the training device.

Batches arrive as uint8 NHWC tensors already on the device (from FFCV or the in-memory
loader). Random crop with zero padding and the horizontal flip are one gather over the
padded batch, done on uint8 (a quarter of the bytes of float); normalisation folds into a
single multiply-add that also casts to the training dtype. The NHWC layout is kept: its
NCHW view is exactly the channels_last memory format, so no copy is needed for it.
"""

from __future__ import annotations

import numpy as np
import torch

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def random_crop_flip(
    images: torch.Tensor,
    padding: int,
    flip: bool,
    generator: torch.Generator | None,
    mirror: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image random crop (zero padding) and horizontal flip of a uint8 NHWC batch; with
    ``mirror`` (one bool per image) the flips are those, not random ones."""
    n, h, w, _ = images.shape
    device = images.device
    if padding > 0:
        # Pad H and W (dims 1 and 2 of NHWC) with zeros, as torchvision's RandomCrop(fill=0).
        images = torch.nn.functional.pad(images, (0, 0, padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    if flip and mirror is None:
        mirror = torch.rand((n, 1), device=device, generator=generator) < 0.5
    if padding == 0:
        # Flips only: a select between the batch and its mirror is the same result as the
        # gather below at a fraction of its cost (the draws above keep the random stream).
        return torch.where(mirror.reshape(n, 1, 1, 1), images.flip(2), images) if flip else images
    rows = dy + torch.arange(h, device=device)
    cols = torch.arange(w, device=device).expand(n, w)
    if flip:
        cols = torch.where(mirror.reshape(n, 1), w - 1 - cols, cols)
    cols = dx + cols
    batch = torch.arange(n, device=device)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


class Normalizer:
    """uint8 NHWC -> normalised float NCHW (channels_last or contiguous) in one multiply-add."""

    def __init__(
        self,
        device: torch.device,
        dtype: torch.dtype,
        channels_last: bool,
        mean: tuple[float, ...] = CIFAR10_MEAN,
        std: tuple[float, ...] = CIFAR10_STD,
    ) -> None:
        mean_t = torch.tensor(mean, dtype=torch.float32)
        std_t = torch.tensor(std, dtype=torch.float32)
        # (x/255 - mean) / std  ==  x * scale + shift
        self.scale = (1.0 / (255.0 * std_t)).to(device)
        self.shift = (-mean_t / std_t).to(device)
        self.dtype = dtype
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        x = torch.addcmul(self.shift, images.float(), self.scale)
        x = x.permute(0, 3, 1, 2)  # NHWC storage viewed as NCHW is channels_last
        if size is not None and size != x.shape[-1]:
            # Antialiased, so a downscaled image looks like a smaller photo, not an aliased one;
            # on fp32 because not every device implements it for bf16.
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            x = x.contiguous(memory_format=torch.channels_last)
        x = x.to(self.dtype)
        return x if self.channels_last else x.contiguous()


class BatchAugment:
    """Training and test transforms for uint8 NHWC batches on one device, with its own RNG.

    The generator lives on the same device as the data so that random numbers never cross
    the bus. The trainer reseeds it at the start of every epoch (``set_epoch``), so a resumed
    run draws the same crops without keeping the generator's state in its checkpoints.
    """

    def __init__(
        self,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        *,
        channels_last: bool = True,
        augment: bool = True,
        padding: int = 4,
        flip: bool = True,
        seed: int = 0,
        alternate_flip: bool = False,
        dataset_size: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.normalize = Normalizer(self.device, dtype, channels_last)
        self.augment = augment
        self.padding = padding
        self.flip = flip
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.epoch = 0
        self.first_mirror: torch.Tensor | None = (
            None  # alternating flips: image i's flip in epoch 0
        )
        if alternate_flip:
            coins = torch.Generator().manual_seed(seed)
            self.first_mirror = (torch.rand(dataset_size, generator=coins) < 0.5).to(self.device)

    def mirrors(self, indices: torch.Tensor) -> torch.Tensor:
        """Alternating flips: whether each image (by data-set index) is mirrored this epoch. A
        fair coin decides for epoch 0, and every later epoch flips the previous one, so each
        image is seen both ways every two epochs."""
        assert self.first_mirror is not None, "built without alternate_flip"
        return self.first_mirror[indices] ^ bool(self.epoch % 2)

    def train(
        self, images: torch.Tensor, size: int | None = None, indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Crop and flip (when on), normalise, and resize to ``size`` x ``size`` (progressive
        resizing) after the crop, so the padding is the same fraction of the image at every size.
        With alternating flips, ``indices`` are the batch's data-set indices."""
        if self.augment:
            mirror = (
                self.mirrors(indices)
                if self.first_mirror is not None and indices is not None
                else None
            )
            images = random_crop_flip(images, self.padding, self.flip, self.generator, mirror)
        return self.normalize(images, size)

    def test(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(images)

    def set_epoch(self, seed: int, epoch: int, rank: int = 0) -> None:
        """Reseed from (seed, epoch, rank): each epoch's crops are fixed by those three numbers,
        so a resumed run redraws them exactly and data-parallel ranks draw different ones."""
        self.epoch = epoch
        mixed = np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)[0]
        self.generator.manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)
