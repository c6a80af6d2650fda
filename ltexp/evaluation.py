"""Evaluation: a model's logits on the test splits, accuracy overall and per class group,
intervals (exact binomial for a run's accuracy, bootstrap for paired differences), per-class
tables.

Apart from :func:`predict_test_sets` (the inference), plain functions of predictions and labels
(NumPy), so results can be recomputed from the saved predictions by anyone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import stats
from scipy.optimize import minimize_scalar

from ltexp.data.pipeline import ImageFormat, evaluation_batches
from ltexp.data.splits import SHOT_GROUPS
from ltexp.training import predict

if TYPE_CHECKING:
    import torch

    from ltexp.data import PreparedData


@dataclass
class GroupScore:
    """Accuracy of one group of test images, with its exact binomial (Clopper-Pearson) interval,
    and its expected calibration error (NaN without confidences)."""

    n: int
    acc1: float
    acc5: float
    ci_low: float
    ci_high: float
    ece: float = float("nan")


CALIBRATION_BINS = 15  # Guo et al. 2017 and the long-tailed papers after them (MiSLAS: 15)


def softmax_confidence(logits: np.ndarray) -> np.ndarray:
    """The top-1 softmax probability of each row of logits (float64, stable)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p.max(axis=1) / p.sum(axis=1)


def reliability(
    confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin (0, 1/bins], …: the mean confidence, the accuracy and the
    number of images (NaN for an empty bin): a reliability diagram's points."""
    index = np.clip(np.ceil(np.asarray(confidence) * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(index, weights=confidence, minlength=bins) / count
        acc = np.bincount(index, weights=np.asarray(correct, float), minlength=bins) / count
    return conf, acc, count


def calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> float:
    """The expected calibration error: Σ_b (n_b / N) · |accuracy_b − confidence_b| over
    equal-width confidence bins (Guo et al., ICML 2017)."""
    if len(confidence) == 0:
        return float("nan")
    conf, acc, count = reliability(confidence, correct, bins)
    filled = count > 0
    return float(np.sum(count[filled] / count.sum() * np.abs(acc[filled] - conf[filled])))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of ``softmax(z / T)`` on
    held-out logits (Guo et al. 2017's temperature scaling, fitted on the validation set): it
    changes the confidences, never the predictions."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)

    def nll(log_t: float) -> float:
        scaled = z / np.exp(log_t)
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scaled).sum(axis=1))
        return float(np.mean(log_norm - scaled[np.arange(len(y)), y]))

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def predict_test_sets(
    model: torch.nn.Module,
    prepared: PreparedData,
    splits: Sequence[str],
    *,
    batch_size: int,
    device: torch.device,
    image_size: int,
    amp: torch.dtype | None,
    channels_last: bool = False,
    adjust: Callable[[Any], Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``(labels, logits)`` of each split (float32 NumPy); a split the set lacks has no rows.

    Args:
        adjust: applied to each split's logits (a post-hoc logit adjustment), or None.
        mean: the model's input normalisation's mean (default: the protocol's).
        std: its standard deviation (default: the protocol's).
    """
    outputs = {}
    for split in splits:
        data = prepared.splits[split]
        if not prepared.has(split):  # a set long-tailed as given has one of the two
            outputs[split] = (data.labels, np.zeros((0, prepared.num_classes), np.float32))
            continue
        image_format = ImageFormat(
            device, image_size, amp or torch.float32, mean, std, channels_last
        )
        batches = evaluation_batches(data.images, data.labels, batch_size, image_format)
        logits = predict(model, batches, amp, desc=f"evaluate {split}")
        if adjust is not None:
            logits = adjust(logits)
        outputs[split] = (data.labels, logits.float().cpu().numpy())
    return outputs


def topk(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest logits per row, best first, ``[N, k]``."""
    k = min(k, logits.shape[1])
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(logits, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


def bootstrap_means(values: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """``samples`` means of ``values`` resampled with replacement (seeded), ``(samples,)``."""
    n = len(values)
    rng = np.random.default_rng(seed)
    # in chunks: samples × n indices at once would not fit for large test sets
    return np.concatenate(
        [
            values[rng.integers(0, n, size=(min(256, samples - start), n))].mean(axis=1)
            for start in range(0, samples, 256)
        ]
    )


def percentile_interval(means: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap means (the percentile bootstrap)."""
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def binomial_interval(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Clopper-Pearson ("exact") interval of an accuracy of ``correct`` out of ``n`` images:
    the right interval for a binomial proportion however few the images (a percentile bootstrap
    of 38/38 is [1, 1]; this is [0.907, 1]). It covers test-set sampling of one trained model."""
    if n == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - level
    low = 0.0 if correct == 0 else float(stats.beta.ppf(alpha / 2, correct, n - correct + 1))
    high = 1.0 if correct == n else float(stats.beta.ppf(1 - alpha / 2, correct + 1, n - correct))
    return low, high


def score(
    labels: np.ndarray,
    top5: np.ndarray,
    mask: np.ndarray | None,
    confidence: np.ndarray | None = None,
) -> GroupScore | None:
    """Top-1/top-5 accuracy of the images selected by ``mask`` (None: all), with the 95 %
    Clopper-Pearson interval of top-1 (:func:`binomial_interval`) and, given the top-1
    confidences, the expected calibration error (:func:`calibration_error`)."""
    if mask is not None:
        labels, top5 = labels[mask], top5[mask]
        confidence = None if confidence is None else confidence[mask]
    if len(labels) == 0:
        return None
    correct1 = top5[:, 0] == labels
    correct5 = (top5 == labels[:, None]).any(axis=1)
    low, high = binomial_interval(int(correct1.sum()), len(labels))
    ece = float("nan") if confidence is None else calibration_error(confidence, correct1)
    return GroupScore(len(labels), float(correct1.mean()), float(correct5.mean()), low, high, ece)


def spreadsheet_safe(text: str) -> str:
    """A CSV cell that a spreadsheet shows as text: a value starting with ``= + - @`` or a
    control character is a formula there (``=cmd|' /C calc'!A0``), so it gets a leading ``'``
    (OWASP's advice for CSV injection); other control characters (a terminal's escape bytes)
    become U+FFFD. Class names come from folder names, list files and registered models."""
    guarded = f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
    return "".join(c if c.isprintable() else "\ufffd" for c in guarded)


def per_class_accuracy(
    labels: np.ndarray, preds: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(images per class, top-1 accuracy per class; NaN for a class with no images)."""
    n = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels[preds == labels], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, hits / np.maximum(n, 1), np.nan)
    return n, acc


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]``."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def in_classes(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Mask of the images whose label is in ``classes``."""
    return np.isin(labels, np.asarray(list(classes), dtype=labels.dtype))


def score_test_sets(
    test_balanced: tuple[np.ndarray, np.ndarray],
    test_lt: tuple[np.ndarray, np.ndarray],
    groups: dict[str, Sequence[int]],
    group_split: str = "test_lt",
) -> dict[str, GroupScore]:
    """Scores of the test sets: ``balanced``, ``lt``, each class group, and the shot groups on
    the long-tailed test set too (``lt_many``, …).

    Args:
        test_balanced: ``(labels, logits)`` of the balanced test split (may be empty).
        test_lt: the same of the long-tailed test split (may be empty).
        groups: group name → its classes (head, middle, tail, many, medium, few).
        group_split: the split head/middle/tail are scored on: test_lt, or test_balanced for a
            set long-tailed as given whose only test set is balanced. Many/medium/few are
            scored on the balanced test set where there is one, as the literature does (Liu et
            al. 2019), else on ``group_split``.

    Returns:
        group → score; a set or group with no image is left out.
    """
    top5 = {
        split: (labels, topk(logits, 5), softmax_confidence(logits))
        for split, (labels, logits) in (("test_balanced", test_balanced), ("test_lt", test_lt))
    }
    scores = {
        "balanced": score(*top5["test_balanced"][:2], None, top5["test_balanced"][2]),
        "lt": score(*top5["test_lt"][:2], None, top5["test_lt"][2]),
    }
    shot_split = "test_balanced" if len(test_balanced[0]) else group_split
    for name, classes in groups.items():
        labels, top5_split, conf = top5[shot_split if name in SHOT_GROUPS else group_split]
        scores[name] = score(labels, top5_split, in_classes(labels, classes), conf)
        if name in SHOT_GROUPS and shot_split != "test_lt" and len(test_lt[0]):
            labels, top5_lt, conf = top5["test_lt"]
            scores[f"lt_{name}"] = score(labels, top5_lt, in_classes(labels, classes), conf)
    return {g: s for g, s in scores.items() if s is not None}
