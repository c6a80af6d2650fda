"""The input pipeline: a split held as a uint8 tensor (on the GPU when training there), augmented
a whole batch at a time with tensor ops. No PIL, no DataLoader workers, no per-image Python.

Train (docs/protocol.md), ``augment="crop"``: resize to ``image_size`` (bilinear), random crop with
4 px zero padding, horizontal flip with p = 0.5, normalise. ``augment="rrc"`` (the ImageNet-LT
recipe, for image-file sets): a random-resized crop (scale 0.08–1, aspect 3/4–4/3, as torchvision's
RandomResizedCrop) resampled to ``image_size`` with ``roi_align``, and the flip. Eval: resize,
normalise. Randomness for an epoch (order, crop offsets or boxes, flips) comes from a CPU generator
seeded by ``(seed, epoch)``: the same seed gives the same batches on any device, and a resumed run
replays an epoch exactly without saving any loader state.

A split larger than ``max_resident_bytes`` stays in host memory (pinned when the device is a GPU):
each batch is gathered there and copied while the previous batch trains, on a side CUDA stream. The
batches are the same as the resident path's; only where the gather happens differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ltexp import accelerator
from ltexp.data.samplers import sample_order

# The protocol normalises every dataset with these channel statistics (SPEC.md: the thesis's
# pipeline; they are CIFAR-10's, kept for CIFAR-100 and every other set, as the thesis did).
PROTOCOL_MEAN = (0.4914, 0.4822, 0.4465)
PROTOCOL_STD = (0.2023, 0.1994, 0.2010)
CROP_PADDING = 4


def to_tensor_images(images: np.ndarray | Tensor, device: torch.device | str) -> Tensor:
    """``(N, H, W, 3)`` uint8 → ``(N, 3, H, W)`` uint8 on ``device`` (one copy)."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {x.dtype} {list(x.shape)}")
    return accelerator.to_device(x, device).permute(0, 3, 1, 2).contiguous()


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


# RandomResizedCrop's defaults (torchvision), the ImageNet recipe
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
RRC_TRIES = 10
AUGMENTATIONS = ("crop", "rrc")


def random_resized_boxes(n: int, h: int, w: int, g: torch.Generator) -> Tensor:
    """``(n, 4)`` float boxes ``x1, y1, x2, y2`` drawn as torchvision's RandomResizedCrop draws
    them: up to 10 tries of an area share and a log-uniform aspect ratio; a sample whose tries
    all fail gets the centre crop of the clamped ratio."""
    area = h * w
    share = torch.empty(n, RRC_TRIES).uniform_(*RRC_SCALE, generator=g)
    log_ratio = torch.empty(n, RRC_TRIES).uniform_(
        float(np.log(RRC_RATIO[0])), float(np.log(RRC_RATIO[1])), generator=g
    )
    ratio = log_ratio.exp()
    cw = (share * area * ratio).sqrt().round()
    ch = (share * area / ratio).sqrt().round()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    u = torch.rand(n, 2, generator=g)
    rows = torch.arange(n)
    pick = first.clamp(min=0)
    cw, ch = cw[rows, pick], ch[rows, pick]
    # the fallback: the whole image cropped to the nearest allowed ratio, centred
    fw = torch.full((n,), float(w))
    fh = torch.full((n,), float(h))
    if w / h < RRC_RATIO[0]:
        fh = torch.full((n,), float(round(w / RRC_RATIO[0])))
    elif w / h > RRC_RATIO[1]:
        fw = torch.full((n,), float(round(h * RRC_RATIO[1])))
    failed = first < 0
    cw, ch = torch.where(failed, fw, cw), torch.where(failed, fh, ch)
    x1 = torch.where(failed, (w - cw) / 2, (u[:, 0] * (w - cw + 1)).floor())
    y1 = torch.where(failed, (h - ch) / 2, (u[:, 1] * (h - ch + 1)).floor())
    return torch.stack([x1, y1, x1 + cw, y1 + ch], 1)


def resized_crop_flip(x: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """Each image's box resampled (bilinear) to ``size``², then flipped where ``flip``."""
    from torchvision.ops import roi_align  # torchvision (1 s): only the rrc augmentation needs it

    index = torch.arange(len(x), device=x.device, dtype=x.dtype)[:, None]
    # sampling_ratio 0: ceil(box / size) samples per output pixel, averaged; one sample (exact)
    # where the crop is not shrunk, an area average (an antialiased resize) where it is
    out = roi_align(x, torch.cat([index, boxes.to(x.dtype)], 1), size, 1.0, 0, aligned=True)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@dataclass
class EpochPlan:
    """An epoch's randomness: sample order, crop offsets or boxes, flips (on the data's device;
    ``cpu_order`` on the host, where a streamed split is gathered)."""

    order: Tensor
    offsets: Tensor
    flip: Tensor
    cpu_order: Tensor | None = None


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
        augment: ``crop`` (the CIFAR protocol) or ``rrc`` (random-resized crop); training only.
        max_resident_bytes: a split larger than this stays in host memory and is streamed
            (None: always resident).
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
        mean: tuple[float, ...] = PROTOCOL_MEAN,
        std: tuple[float, ...] = PROTOCOL_STD,
        rank: int = 0,
        world_size: int = 1,
        sampler: str = "instance",
        epochs: int = 1,
        augment: str = "crop",
        max_resident_bytes: int | None = None,
    ) -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        self.device = torch.device(device)
        self.augment = augment
        nbytes = int(np.prod(images.shape))  # uint8: a byte per value
        self.streamed = max_resident_bytes is not None and nbytes > max_resident_bytes
        if self.streamed:
            self.images = accelerator.host_buffer(_host_images(images), self.device)
            self.copy_stream = accelerator.copy_stream(self.device)
        else:
            self.images = to_tensor_images(images, self.device)
        self.cpu_labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        self.labels = self.cpu_labels.to(self.device)
        self.sampler, self.epochs = sampler, epochs
        self.batch_size = batch_size
        self.source_size = int(images.shape[2])  # width of the stored images
        self.image_size = image_size or self.source_size
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
        if self.augment == "rrc":  # boxes in the stored image's pixels
            side = self.source_size
            offsets = random_resized_boxes(total, side, side, g)
        else:
            offsets = torch.randint(0, 2 * CROP_PADDING + 1, (total, 2), generator=g)
        flip = torch.rand(total, generator=g) < 0.5
        if self.world_size > 1:  # pad by wrapping so every rank gets as many batches
            shard = slice(self.rank, None, self.world_size)
            order = torch.cat([order, order[: total - n]])[shard]
            offsets, flip = offsets[shard], flip[shard]
        return EpochPlan(
            accelerator.to_device(order, self.device),
            accelerator.to_device(offsets, self.device),
            accelerator.to_device(flip, self.device),
            order,
        )

    def visits(self, epoch: int) -> Tensor:
        """Images per class that epoch ``epoch`` visits on this rank (CPU)."""
        order = self.plan(epoch).order.cpu()
        return torch.bincount(self.cpu_labels[order], minlength=int(self.cpu_labels.max()) + 1)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(images, labels)`` batches of ``epoch``."""
        plan = self.plan(epoch)
        images = self._streamed(plan) if self.streamed else None
        for start in range(0, len(plan.order), self.batch_size):
            idx = plan.order[start : start + self.batch_size]
            stored = next(images) if images is not None else self.images[idx]
            x = stored.to(torch.float32) * self.scale
            batch = slice(start, start + self.batch_size)
            if self.train and self.augment == "rrc":
                x = resized_crop_flip(x, plan.offsets[batch], plan.flip[batch], self.image_size)
            else:
                if self.image_size != x.shape[-1]:
                    x = F.interpolate(
                        x,
                        size=(self.image_size, self.image_size),
                        mode="bilinear",
                        align_corners=False,
                    )
                if self.train:
                    x = crop_flip(x, plan.offsets[batch], plan.flip[batch], CROP_PADDING)
            x = x - self.shift
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            yield x.to(self.dtype, memory_format=fmt), self.labels[idx]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.epoch(0)

    def _streamed(self, plan: EpochPlan) -> Iterator[Tensor]:
        """``(B, 3, H, W)`` uint8 batches on the device, gathered on the host; on a GPU the next
        batch is copied on a side stream while the current one trains."""
        order = plan.cpu_order if plan.cpu_order is not None else plan.order.cpu()
        # a generator: each host batch is gathered only when the prefetch asks for it
        host = (
            self.images[order[start : start + self.batch_size]]
            for start in range(0, len(order), self.batch_size)
        )
        for batch in accelerator.prefetched(host, self.device, self.copy_stream):
            yield batch.permute(0, 3, 1, 2)


def _host_images(images: np.ndarray | Tensor) -> Tensor:
    """``(N, H, W, 3)`` uint8 kept on the host."""
    x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {x.dtype} {list(x.shape)}")
    return x


@dataclass(frozen=True)
class ImageFormat:
    """How a model takes its images: on which device, at which side, in which dtype and
    memory layout, normalised with which mean and std (None: the protocol's)."""

    device: torch.device
    image_size: int | None = None
    dtype: torch.dtype = torch.float32
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels_last: bool = False

    def batches_options(self) -> dict:
        """The :class:`TensorBatches` keywords of this format."""
        return {
            "device": self.device,
            "image_size": self.image_size,
            "dtype": self.dtype,
            "channels_last": self.channels_last,
            "mean": tuple(self.mean) if self.mean is not None else PROTOCOL_MEAN,
            "std": tuple(self.std) if self.std is not None else PROTOCOL_STD,
        }


def evaluation_batches(
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    batch_size: int,
    fmt: ImageFormat,
    max_resident_bytes: int | None = None,
) -> TensorBatches:
    """A split for validation or testing: every image once, in order, resized and normalised."""
    return TensorBatches(
        images, labels, batch_size, max_resident_bytes=max_resident_bytes, **fmt.batches_options()
    )


def training_batches(
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    batch_size: int,
    fmt: ImageFormat,
    *,
    seed: int,
    epochs: int,
    sampler: str = "instance",
    augment: str = "crop",
    rank: int = 0,
    world_size: int = 1,
    max_resident_bytes: int | None = None,
) -> TensorBatches:
    """A split for training: shuffled (``sampler``) and augmented (``augment``) anew each epoch
    from ``seed``, sharded over ``world_size`` data-parallel ranks."""
    return TensorBatches(
        images,
        labels,
        batch_size,
        train=True,
        seed=seed,
        epochs=epochs,
        sampler=sampler,
        augment=augment,
        rank=rank,
        world_size=world_size,
        max_resident_bytes=max_resident_bytes,
        **fmt.batches_options(),
    )
