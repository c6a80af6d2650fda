"""Samplers: their class proportions over many epochs, within the binomial spread; replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltexp.data.pipeline import TensorBatches
from ltexp.data.samplers import SAMPLERS, class_probabilities, sample_order

COUNTS = np.array([120, 40, 12, 4, 1])
LABELS = torch.as_tensor(np.repeat(np.arange(len(COUNTS)), COUNTS))
EPOCHS = 300


def _drawn(name: str, epochs: int = EPOCHS, epoch: int | None = None) -> np.ndarray:
    g = torch.Generator().manual_seed(0)
    total = np.zeros(len(COUNTS))
    for e in range(1, epochs + 1):
        order = sample_order(LABELS, name, epoch or e, EPOCHS, g)
        total += np.bincount(LABELS[order].numpy(), minlength=len(COUNTS))
    return total


@pytest.mark.parametrize(
    "name,q", [("class_balanced", 0.0), ("sqrt", 0.5)], ids=["class_balanced", "sqrt"]
)
def test_proportions_are_n_to_the_q_within_the_binomial_spread(name: str, q: float) -> None:
    drawn = _drawn(name)
    draws = len(LABELS) * EPOCHS
    p = COUNTS**q / (COUNTS**q).sum()
    sigma = np.sqrt(draws * p * (1 - p))
    assert np.all(np.abs(drawn - draws * p) < 5 * sigma), (drawn, draws * p)
    if name == "class_balanced":  # the rarest class's one image is drawn as often as any class
        assert drawn[-1] == pytest.approx(draws / len(COUNTS), rel=0.05)


def test_instance_sampling_is_a_permutation_and_progressive_moves_from_it_to_balanced() -> None:
    g = torch.Generator().manual_seed(1)
    order = sample_order(LABELS, "instance", 1, EPOCHS, g)
    assert sorted(order.tolist()) == list(range(len(LABELS)))
    first = class_probabilities("progressive", COUNTS, 1, EPOCHS)
    last = class_probabilities("progressive", COUNTS, EPOCHS, EPOCHS)
    middle = class_probabilities("progressive", COUNTS, (EPOCHS + 1) // 2, EPOCHS)
    assert first == pytest.approx(COUNTS / COUNTS.sum())
    assert last == pytest.approx(np.full(len(COUNTS), 1 / len(COUNTS)))
    assert middle == pytest.approx((first + last) / 2, abs=2e-3)
    assert set(SAMPLERS) == {"instance", "class_balanced", "sqrt", "progressive"}


def test_an_epoch_replays_exactly_and_logs_what_it_drew() -> None:
    images = np.zeros((len(LABELS), 8, 8, 3), np.uint8)

    def batches() -> TensorBatches:
        return TensorBatches(
            images, LABELS.numpy(), 16, train=True, seed=3, sampler="class_balanced", epochs=9
        )

    a, b = batches(), batches()
    assert torch.equal(a.plan(4).order, b.plan(4).order)  # a resumed epoch draws the same
    assert not torch.equal(a.plan(4).order, a.plan(5).order)
    visits = a.visits(4)
    assert int(visits.sum()) == len(LABELS) and torch.equal(
        visits, torch.bincount(LABELS[a.plan(4).order.cpu()], minlength=len(COUNTS))
    )
