"""Evaluation functions on hand-made predictions: top-k, groups, intervals, per class."""

from __future__ import annotations

import numpy as np
import pytest

from ltexp.evaluation import (
    binomial_interval,
    confusion_matrix,
    in_classes,
    per_class_accuracy,
    score,
    score_test_sets,
    topk,
)


def test_topk_orders_best_first() -> None:
    logits = np.array([[0.1, 0.9, 0.5, 0.0], [3.0, -1.0, 2.0, 1.0]])
    assert topk(logits, 2).tolist() == [[1, 2], [0, 2]]
    assert topk(logits, 10).shape == (2, 4)  # k larger than the classes: all of them


def test_score_counts_top1_and_top5_on_the_masked_images() -> None:
    labels = np.array([0, 1, 2, 3])
    top5 = np.array([[0, 1, 2, 3, 4], [2, 1, 0, 3, 4], [5, 6, 7, 8, 9], [3, 0, 1, 2, 4]])
    s = score(labels, top5, None)
    assert (s.n, s.acc1, s.acc5) == (4, 0.5, 0.75)
    assert (s.ci_low, s.ci_high) == binomial_interval(2, 4)
    masked = score(labels, top5, np.array([True, False, False, True]))
    assert (masked.n, masked.acc1) == (2, 1.0)
    assert score(labels, top5, np.zeros(4, bool)) is None


def test_a_small_group_gets_the_exact_binomial_interval() -> None:
    """Issue 25: a percentile bootstrap gave [1.000, 1.000] for 38/38 and [0.868, 1.000] for
    36/38; the Clopper-Pearson interval is right for a proportion on few images."""
    assert binomial_interval(36, 38) == pytest.approx((0.8225, 0.9936), abs=5e-5)
    # the closed forms at the edges: (α/2)^(1/n) and 1 − (α/2)^(1/n)
    assert binomial_interval(38, 38) == pytest.approx((0.025 ** (1 / 38), 1.0))
    assert binomial_interval(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)))
    # and the binomial's own coverage: P(k ≤ 36 | p = high) = P(k ≥ 36 | p = low) = 2.5 %
    from scipy import stats

    low, high = binomial_interval(36, 38)
    assert stats.binom.cdf(36, 38, high) == pytest.approx(0.025)
    assert stats.binom.sf(35, 38, low) == pytest.approx(0.025)
    assert all(np.isnan(binomial_interval(0, 0)))


def test_score_test_sets_scores_every_group_of_test_lt() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 1, 1, 2])
    logits = rng.normal(size=(6, 3))
    logits[np.arange(6), labels] += np.array([5, 5, -5, 5, -5, 5])  # 4 of 6 right
    balanced = (np.array([0, 1, 2]), np.eye(3))  # all right
    scores = score_test_sets(balanced, (labels, logits), {"head": [0], "tail": [1, 2], "few": []})
    assert set(scores) == {"balanced", "lt", "head", "tail"}  # an empty group is left out
    assert scores["balanced"].acc1 == 1.0
    assert scores["lt"].acc1 == pytest.approx(4 / 6)
    assert scores["head"].acc1 == pytest.approx(2 / 3) and scores["head"].n == 3
    assert scores["tail"].acc1 == pytest.approx(2 / 3) and scores["tail"].n == 3


def test_per_class_accuracy_and_confusion() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    preds = np.array([0, 1, 1, 1, 0])
    n, acc = per_class_accuracy(labels, preds, 3)
    assert n.tolist() == [2, 3, 0]
    assert acc[:2] == pytest.approx([0.5, 2 / 3]) and np.isnan(acc[2])
    assert confusion_matrix(labels, preds, 3).tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 0]]
    assert in_classes(labels, [1]).tolist() == [False, False, True, True, True]


def test_a_class_name_that_a_spreadsheet_would_run_is_written_as_text() -> None:
    import csv
    import io

    from ltexp.evaluation import spreadsheet_safe

    hostile = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx"]
    buf = io.StringIO()
    csv.writer(buf).writerows([[spreadsheet_safe(n)] for n in [*hostile, "dog", "a=b"]])
    cells = [row[0] for row in csv.reader(io.StringIO(buf.getvalue()))]
    assert cells[:4] == [f"'{n}" for n in hostile[:4]] and cells[5:] == ["dog", "a=b"]
    assert cells[4] == "'\ufffdx"  # the tab guarded, then made printable
    # issue 39: a terminal's escape bytes never reach the file
    assert spreadsheet_safe("\x1b[31mred\x1b[0m") == "\ufffd[31mred\ufffd[0m"


def test_shot_groups_are_scored_on_the_balanced_test_set_and_again_on_the_long_tailed_one() -> None:
    """Issue 25: many/medium/few as the literature measures them, on the balanced test set;
    the long-tailed measure stays as lt_many/lt_medium/lt_few."""
    k = 3
    balanced = np.repeat(np.arange(k), 4)  # 4 test images per class
    long_tailed = np.array([0, 0, 0, 0, 1, 1, 2])
    bal_logits = np.eye(k)[balanced].copy()
    bal_logits[[0, 1], :] = np.eye(k)[[1, 1]]  # 2 of class 0's balanced images wrong
    lt_logits = np.eye(k)[long_tailed].copy()
    lt_logits[[4], :] = np.eye(k)[[0]]  # 1 of class 1's long-tailed images wrong
    groups = {"head": [0], "middle": [1], "tail": [2], "many": [0], "medium": [1], "few": [2]}
    scores = score_test_sets((balanced, bal_logits), (long_tailed, lt_logits), groups)
    assert (scores["many"].n, scores["many"].acc1) == (4, 0.5)  # balanced: 2 of class 0's 4
    assert (scores["lt_many"].n, scores["lt_many"].acc1) == (4, 1.0)  # long-tailed: all 4
    assert (scores["medium"].acc1, scores["lt_medium"].acc1) == (1.0, 0.5)
    assert (scores["head"].n, scores["head"].acc1) == (4, 1.0)  # the thesis's groups: long-tailed
    # a set without a balanced test set measures every group on the long-tailed one, once
    empty = (np.zeros(0, int), np.zeros((0, k)))
    only_lt = score_test_sets(empty, (long_tailed, lt_logits), groups)
    assert only_lt["many"].acc1 == 1.0 and "lt_many" not in only_lt


def test_calibration_error_is_the_weighted_gap_of_each_confidence_bin() -> None:
    from ltexp.evaluation import calibration_error, reliability

    # by hand, 3 bins: (0, 1/3] holds 0.2, 0.3 (1 right); (1/3, 2/3] holds 0.5 (wrong);
    # (2/3, 1] holds 0.9, 0.8, 1.0 (2 right)
    conf = np.array([0.2, 0.3, 0.5, 0.9, 0.8, 1.0])
    right = np.array([1, 0, 0, 1, 1, 0], bool)
    expected = 2 / 6 * abs(0.5 - 0.25) + 1 / 6 * abs(0.0 - 0.5) + 3 / 6 * abs(2 / 3 - 0.9)
    assert calibration_error(conf, right, bins=3) == pytest.approx(expected)
    mean_conf, acc, count = reliability(conf, right, bins=3)
    assert count.tolist() == [2, 1, 3] and acc.tolist() == pytest.approx([0.5, 0.0, 2 / 3])
    assert mean_conf.tolist() == pytest.approx([0.25, 0.5, 0.9])
    assert calibration_error(np.full(4, 0.75), np.array([1, 1, 1, 0], bool)) == pytest.approx(0)


def test_temperature_scaling_recovers_the_temperature_of_overconfident_logits() -> None:
    from ltexp.evaluation import fit_temperature, softmax_confidence

    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, size=(4000, 10))
    p = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(10, p=row) for row in p])  # drawn from the true probabilities
    overconfident = 3.0 * true_logits
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    # the predictions stay, the confidences come down
    scaled = overconfident / temperature
    assert (scaled.argmax(1) == overconfident.argmax(1)).all()
    assert softmax_confidence(scaled).mean() < softmax_confidence(overconfident).mean()
