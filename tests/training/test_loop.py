"""The training loop on its own: no MLflow, no config, a linear model on tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltexp import schema
from ltexp.data.pipeline import TensorBatches
from ltexp.errors import TrainingError
from ltexp.losses import build_loss
from ltexp.training import fit, predict, train_one_epoch, validate

K = 4


def _data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose mean colour encodes the label: linearly separable."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % K
    images = rng.integers(0, 40, size=(n, 8, 8, 3)).astype(np.uint8)
    images[..., 0] += (labels * 50).astype(np.uint8)[:, None, None]
    return images, labels.astype(np.int64)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, K))


def test_fit_yields_every_epoch_with_the_schema_metrics_and_tracks_the_best() -> None:
    images, labels = _data()
    train = TensorBatches(images, labels, 16, train=True, seed=1)
    val = TensorBatches(images, labels, 32)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    groups = {"head": [0, 1], "tail": [2, 3]}
    results = list(
        fit(model, build_loss("ce", [16] * K), train, val, opt, sched, epochs=3, groups=groups)
    )
    assert [r.epoch for r in results] == [1, 2, 3]
    for r in results:
        assert set(r.metrics) == {
            schema.TRAIN_LOSS,
            schema.TRAIN_ACC1,
            schema.VAL_LOSS,
            schema.VAL_ACC1,
            schema.VAL_BALANCED_ACC1,
            schema.val_metric("head"),
            schema.val_metric("tail"),
            schema.sampled_metric("head"),
            schema.sampled_metric("tail"),
            schema.LR,
            schema.EPOCH_SECONDS,
            schema.IMAGES_PER_S,
        }
    accs = [r.metrics[schema.VAL_ACC1] for r in results]
    best = max(range(3), key=lambda i: (accs[i], -i))  # the first epoch reaching the best
    assert results[-1].best_val_acc1 == accs[best] and results[-1].best_epoch == best + 1
    assert [r.metrics[schema.LR] for r in results] == pytest.approx([1e-2, 1e-2, 1e-3])


def test_fit_resumes_from_a_later_epoch_with_the_best_so_far() -> None:
    images, labels = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no change: val accuracy stays put
    results = list(
        fit(
            model,
            build_loss("ce", [16] * K),
            TensorBatches(images, labels, 16, train=True),
            TensorBatches(images, labels, 64),
            opt,
            torch.optim.lr_scheduler.StepLR(opt, 10),
            epochs=4,
            start_epoch=3,
            best_val_acc1=1.1,  # unbeatable: nothing improves
            best_epoch=2,
            groups={},
        )
    )
    assert [r.epoch for r in results] == [3, 4]
    assert not any(r.improved for r in results) and results[-1].best_epoch == 2


def test_validate_matches_a_direct_computation() -> None:
    images, labels = _data(40, seed=3)
    model = _model()
    batches = TensorBatches(images, labels, 7)  # batches that do not divide the set
    groups = {"a": [0, 3], "b": [1, 2]}
    result = validate(model, batches, groups, K, amp=None)
    logits = predict(model, batches, None)
    pred = logits.argmax(1).numpy()
    assert result.acc1 == pytest.approx((pred == labels).mean())
    for name, classes in groups.items():
        mask = np.isin(labels, classes)
        assert result.group_acc1[name] == pytest.approx((pred[mask] == labels[mask]).mean())
    per_class = [(pred[labels == c] == c).mean() for c in range(K)]
    assert result.balanced_acc1 == pytest.approx(np.mean(per_class))
    expected_loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels)).item()
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)


def test_a_non_finite_loss_names_epoch_and_step() -> None:
    images, labels = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = TensorBatches(images, labels, 16, train=True)
    loss_fn = build_loss("ce", [16] * K)
    train_one_epoch(model, loss_fn, batches, opt, 1)  # finite
    with torch.no_grad():
        model[1].weight.fill_(float("inf"))
    with pytest.raises(TrainingError, match=r"non-finite .* at epoch 2, step 1\b"):
        train_one_epoch(model, loss_fn, batches, opt, 2)


def test_progress_is_a_line_every_interval_when_stdout_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("LTEXP_PROGRESS_SECONDS", "0")  # every step, for the test
    images, labels = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = TensorBatches(images, labels, 16, train=True)  # 4 steps
    train_one_epoch(
        model, build_loss("ce", [16] * K), batches, opt, 2, show_progress=True, epochs=5
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3  # steps 1-3; the epoch's end is reported by the epoch's own line
    import re

    for step, line in enumerate(lines, start=1):
        assert re.fullmatch(rf"epoch 2/5  step {step}/4  [\d,]+ img/s  ETA \d+:\d\d:\d\d", line)
    train_one_epoch(model, build_loss("ce", [16] * K), batches, opt, 3)  # not shown: silent
    assert capsys.readouterr().out == ""
