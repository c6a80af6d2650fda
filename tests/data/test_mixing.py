"""Mixing: mixup with λ = 1 is the identity, CutMix's weight is the area kept, Remix favours the
rarer class, and an epoch's mixing replays exactly."""

from __future__ import annotations

import pytest
import torch

from ltexp.data.mixing import Mixer, cutmix, mixup, remix_weights
from ltexp.losses import build_loss


def test_mixup_with_lambda_one_is_the_identity() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    mixed = mixup(x, y, 1.0, perm)
    assert torch.equal(mixed.images, x)
    loss = build_loss("ce", [3, 2, 1])
    logits = torch.randn(6, 3)
    assert loss.mixed(logits, mixed.y_a, mixed.y_b, mixed.weight_a) == pytest.approx(
        loss(logits, y).item()
    )
    half = mixup(x, y, 0.5, perm)
    assert torch.allclose(half.images, (x + x[perm]) / 2)
    expected = 0.5 * loss(logits, y) + 0.5 * loss(logits, y[perm])
    assert loss.mixed(logits, half.y_a, half.y_b, half.weight_a) == pytest.approx(expected.item())


def test_cutmix_pastes_a_box_and_weighs_by_the_area_kept() -> None:
    x = torch.zeros(2, 1, 10, 10)
    x[1] = 1.0
    mixed = cutmix(x, torch.tensor([0, 1]), 0.75, torch.tensor([1, 0]), (0.5, 0.5))
    pasted = mixed.images[0].sum().item() / 100  # the share of image 0 taken from image 1
    assert mixed.weight_a[0].item() == pytest.approx(1 - pasted)
    assert 0.7 <= mixed.weight_a[0].item() <= 0.8


def test_remix_gives_the_label_to_the_rarer_class() -> None:
    head, tail = torch.tensor([100.0, 100.0, 10.0]), torch.tensor([10.0, 60.0, 100.0])
    # a head image mixed mostly (1 - 0.3) with a tail one: the tail label wins (weight 0)
    assert remix_weights(0.3, head[:1], tail[:1], 3.0, 0.5).tolist() == [0.0]
    # similar sizes: plain mixup's weight
    assert remix_weights(0.3, head[1:2], tail[1:2], 3.0, 0.5).tolist() == pytest.approx([0.3])
    # a tail image kept at 0.7 against a head one: its label wins (weight 1)
    assert remix_weights(0.7, head[2:], tail[2:], 3.0, 0.5).tolist() == [1.0]


def test_an_epoch_mixes_the_same_way_again() -> None:
    x, y = torch.randn(8, 3, 4, 4), torch.arange(8) % 3
    first, second = Mixer("remix", 1.0, [5, 3, 1]), Mixer("remix", 1.0, [5, 3, 1])
    first.start_epoch(seed=7, epoch=2)
    second.start_epoch(seed=7, epoch=2)
    for _ in range(3):
        a, b = first(x, y), second(x, y)
        assert torch.equal(a.images, b.images) and torch.equal(a.weight_a, b.weight_a)
    first.start_epoch(seed=7, epoch=3)
    assert not torch.equal(first(x, y).images, a.images)


def test_cutmix_cuts_half_the_batches_as_yun_et_al_train_cifar() -> None:
    """Issue 25: CutMix's CIFAR training applies it with probability 0.5 (``--cutmix_prob``)."""
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    mixer = Mixer("cutmix")
    mixer.start_epoch(seed=0, epoch=1)
    cut = [not torch.equal(mixer(x, y).images, x) for _ in range(400)]
    assert 0.43 < sum(cut) / 400 < 0.57  # 0.5 ± 3 binomial standard errors
    always, never = Mixer("cutmix", prob=1.0), Mixer("mixup", prob=0.0)
    always.start_epoch(seed=0, epoch=1)
    never.start_epoch(seed=0, epoch=1)
    assert all(not torch.equal(always(x, y).images, x) for _ in range(20))
    left = never(x, y)
    assert torch.equal(left.images, x) and torch.equal(left.weight_a, torch.ones(8))
    assert Mixer("mixup").prob == Mixer("remix").prob == 1.0
