"""The input pipeline: a split held as a uint8 tensor (on the GPU when training there), augmented
a whole batch at a time with tensor ops. No PIL, no DataLoader workers, no per-image Python.

Train (docs/protocol.md): resize to ``image_size`` (bilinear), random crop with 4 px zero padding,
horizontal flip with p = 0.5, normalise. Eval: resize, normalise. Randomness for an epoch (order,
crop offsets, flips) comes from a CPU generator seeded by ``(seed, epoch)``: the same seed gives the
same batches on any device, and a resumed run replays an epoch exactly without saving any loader
state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ltexp.data.samplers import sample_order

# CIFAR statistics, as in the thesis pipeline (docs/protocol.md).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
CROP_PADDING = 4


def to_tensor_images(images: np.ndarray | Tensor, device: torch.device | str) -> Tensor:
    """``(N, H, W, 3)`` uint8 → ``(N, 3, H, W)`` uint8 on ``device`` (one copy)."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {x.dtype} {list(x.shape)}")
    return x.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous()


def crop_flip(x: Tensor, offsets: Tensor, flip: Tensor, padding: int) -> Tensor:
    """Per-sample crop of a zero-padded batch, and horizontal flip, as one gather.

    Args:
        x: ``(B, C, H, W)`` float, in a space where 0 is the padding value.
        offsets: ``(B, 2)`` int, top-left corner of each crop in the padded image, in
            ``[0, 2·padding]``.
        flip: ``(B,)`` bool.
        padding: pixels of zero padding on each side.

    Returns:
        ``(B, C, H, W)`` in channels_last memory layout.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)).permute(0, 2, 3, 1)  # B,H',W',C
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = offsets[:, 0, None] + ar_h
    cols = offsets[:, 1, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, rows[:, :, None], cols[:, None, :]]  # B,H,W,C
    return out.permute(0, 3, 1, 2)


@dataclass
class EpochPlan:
    """An epoch's randomness: sample order, crop offsets, flips (all on the data's device)."""

    order: Tensor
    offsets: Tensor
    flip: Tensor


class TensorBatches:
    """Batches of one split, augmented on the device holding it.

    Args:
        images: uint8 ``(N, H, W, 3)`` (NumPy or tensor).
        labels: int64 ``(N,)``.
        batch_size: images per batch (the last batch may be smaller).
        device: where the split lives and batches are made.
        image_size: side of the output images (resize when it differs from the source).
        train: augment and shuffle (else: fixed order, resize + normalise only).
        seed: seed of every epoch's randomness.
        dtype: dtype of the output images (bf16 on a GPU saves autocast a cast).
        channels_last: output in channels_last layout.
        rank, world_size: data-parallel shard (each rank sees a disjoint 1/world_size).
        sampler: which images a training epoch visits (:mod:`ltexp.data.samplers`).
        epochs: the run's epochs (a progressive sampler moves over them).
    """

    def __init__(
        self,
        images: np.ndarray | Tensor,
        labels: np.ndarray | Tensor,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        image_size: int | None = None,
        train: bool = False,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        mean: tuple[float, ...] = CIFAR_MEAN,
        std: tuple[float, ...] = CIFAR_STD,
        rank: int = 0,
        world_size: int = 1,
        sampler: str = "instance",
        epochs: int = 1,
    ) -> None:
        self.device = torch.device(device)
        self.images = to_tensor_images(images, self.device)
        self.cpu_labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        self.labels = self.cpu_labels.to(self.device)
        self.sampler, self.epochs = sampler, epochs
        self.batch_size = batch_size
        self.image_size = image_size or int(self.images.shape[-1])
        self.train = train
        self.seed = seed
        self.dtype = dtype
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        std_t = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        # Work in x/std space, where 0 is black: zero padding then matches the thesis's black
        # border, and normalising is one subtraction of mean/std at the end.
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) / std_t

    def __len__(self) -> int:
        n = self.shard_size()
        return (n + self.batch_size - 1) // self.batch_size

    def shard_size(self) -> int:
        """Images this rank sees per epoch."""
        n = len(self.labels)
        if self.world_size == 1:
            return n
        return (n + self.world_size - 1) // self.world_size

    def plan(self, epoch: int) -> EpochPlan:
        """The randomness of ``epoch`` (identical for a seed on any device)."""
        n = len(self.labels)
        if not self.train:
            order = torch.arange(n)
            return EpochPlan(order.to(self.device), torch.zeros(0), torch.zeros(0))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = sample_order(self.cpu_labels, self.sampler, epoch, self.epochs, g)
        total = self.shard_size() * self.world_size  # n, or n padded to a multiple of ranks
        offsets = torch.randint(0, 2 * CROP_PADDING + 1, (total, 2), generator=g)
        flip = torch.rand(total, generator=g) < 0.5
        if self.world_size > 1:  # pad by wrapping so every rank gets as many batches
            shard = slice(self.rank, None, self.world_size)
            order = torch.cat([order, order[: total - n]])[shard]
            offsets, flip = offsets[shard], flip[shard]
        return EpochPlan(
            order.to(self.device, non_blocking=True),
            offsets.to(self.device, non_blocking=True),
            flip.to(self.device, non_blocking=True),
        )

    def visits(self, epoch: int) -> Tensor:
        """Images per class that epoch ``epoch`` visits on this rank (CPU)."""
        order = self.plan(epoch).order.cpu()
        return torch.bincount(self.cpu_labels[order], minlength=int(self.cpu_labels.max()) + 1)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(images, labels)`` batches of ``epoch``."""
        plan = self.plan(epoch)
        for start in range(0, len(plan.order), self.batch_size):
            idx = plan.order[start : start + self.batch_size]
            x = self.images[idx].to(torch.float32) * self.scale
            if self.image_size != x.shape[-1]:
                x = F.interpolate(
                    x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
                )
            if self.train:
                x = crop_flip(
                    x,
                    plan.offsets[start : start + self.batch_size],
                    plan.flip[start : start + self.batch_size],
                    CROP_PADDING,
                )
            x = x - self.shift
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            yield x.to(self.dtype, memory_format=fmt), self.labels[idx]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.epoch(0)
