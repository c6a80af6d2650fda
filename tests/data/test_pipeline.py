"""The tensor input pipeline against a per-image reference of the thesis transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltexp.data.pipeline import PROTOCOL_MEAN, PROTOCOL_STD, TensorBatches, crop_flip


def test_crop_flip_matches_pad_crop_flip_per_image() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 10, 10, generator=g)
    offsets = torch.randint(0, 9, (6, 2), generator=g)
    flip = torch.tensor([True, False, True, False, False, True])
    out = crop_flip(x, offsets, flip, padding=4)
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(6):
        dy, dx = offsets[i].tolist()
        ref = padded[i, :, dy : dy + 10, dx : dx + 10]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def _images(n: int = 20, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        rng.integers(0, 5, n).astype(np.int64),
    )


def test_eval_batches_are_resized_and_normalised() -> None:
    images, labels = _images()
    batches = TensorBatches(images, labels, batch_size=7, image_size=16)
    got = torch.cat([x for x, _ in batches.epoch(0)])
    ref = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    ref = F.interpolate(ref, size=(16, 16), mode="bilinear", align_corners=False)
    ref = (ref - torch.tensor(PROTOCOL_MEAN).view(1, 3, 1, 1)) / torch.tensor(PROTOCOL_STD).view(
        1, 3, 1, 1
    )
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.equal(torch.cat([y for _, y in batches.epoch(0)]), torch.from_numpy(labels))


def test_train_batches_pad_with_black_and_cover_each_image_once() -> None:
    images, labels = _images()
    batches = TensorBatches(images, labels, batch_size=8, train=True, seed=3)
    xs, ys = zip(*batches.epoch(1), strict=True)
    assert sorted(torch.cat(ys).tolist()) == sorted(labels.tolist())
    x = torch.cat(xs)
    black = -torch.tensor(PROTOCOL_MEAN) / torch.tensor(PROTOCOL_STD)
    # some pixel of some image is zero padding, i.e. normalised black
    border = x[:, :, 0, :].permute(0, 2, 1).reshape(-1, 3)
    assert (border - black).abs().sum(1).min() < 1e-5


def test_same_seed_same_batches_and_epochs_differ() -> None:
    images, labels = _images()
    a = TensorBatches(images, labels, batch_size=8, train=True, seed=3)
    b = TensorBatches(images, labels, batch_size=8, train=True, seed=3)
    for (xa, ya), (xb, yb) in zip(a.epoch(2), b.epoch(2), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    first = torch.cat([x for x, _ in a.epoch(1)])
    second = torch.cat([x for x, _ in a.epoch(2)])
    assert not torch.equal(first, second)


@pytest.mark.parametrize("world", [2, 3])
def test_data_parallel_shards_cover_the_set(world: int) -> None:
    images, labels = _images(n=20)
    seen = []
    for rank in range(world):
        b = TensorBatches(
            images, labels, batch_size=4, train=True, seed=1, rank=rank, world_size=world
        )
        seen.append(torch.cat([y for _, y in b.epoch(0)]))
        assert len(b) == len(list(b.epoch(0)))
    assert len({len(s) for s in seen}) == 1  # every rank gets as many images
    assert sum(len(s) for s in seen) >= 20


def test_channels_last_and_dtype() -> None:
    images, labels = _images()
    b = TensorBatches(
        images, labels, batch_size=8, train=True, dtype=torch.bfloat16, channels_last=True
    )
    x, _ = next(iter(b.epoch(0)))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("augment", ["crop", "rrc"])
@pytest.mark.parametrize("train", [True, False])
def test_streamed_batches_equal_the_resident_ones(augment: str, train: bool) -> None:
    images, labels = _images(n=37, size=12)
    kw = {"batch_size": 8, "image_size": 10, "train": train, "seed": 3, "augment": augment}
    resident = TensorBatches(images, labels, **kw)
    streamed = TensorBatches(images, labels, max_resident_bytes=images.nbytes - 1, **kw)
    assert streamed.streamed and not resident.streamed
    assert TensorBatches(images, labels, max_resident_bytes=images.nbytes, **kw).streamed is False
    for epoch in (0, 1):
        pairs = list(zip(resident.epoch(epoch), streamed.epoch(epoch), strict=True))
        assert len(pairs) == 5
        for (xr, yr), (xs, ys) in pairs:
            assert torch.equal(xr, xs) and torch.equal(yr, ys)


def test_random_resized_boxes_follow_torchvision_ranges() -> None:
    from ltexp.data.pipeline import RRC_RATIO, RRC_SCALE, random_resized_boxes

    boxes = random_resized_boxes(4000, 64, 64, torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 64).all()
    share = w * h / 64**2
    # rounding the sides to whole pixels moves the share and ratio a little off their ranges
    assert share.min() >= RRC_SCALE[0] * 0.8 and share.max() <= RRC_SCALE[1]
    assert (w / h).min() >= RRC_RATIO[0] * 0.9 and (w / h).max() <= RRC_RATIO[1] * 1.1
    assert share.std() > 0.2  # spread over the range, not one size
    again = random_resized_boxes(4000, 64, 64, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)


def test_resized_crop_of_the_whole_image_is_a_resize() -> None:
    from ltexp.data.pipeline import resized_crop_flip

    x = torch.rand(2, 3, 16, 16)
    whole = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 2)
    out = resized_crop_flip(x, whole, torch.tensor([False, True]), 16)
    assert torch.allclose(out[0], x[0], atol=1e-5)
    assert torch.allclose(out[1], x[1].flip(-1), atol=1e-5)
    half = resized_crop_flip(
        x, torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2), torch.tensor([False] * 2), 8
    )
    assert torch.allclose(half[0], x[0, :, :8, :8], atol=1e-5)
