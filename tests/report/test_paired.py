"""The paired bootstrap against a direct computation on a small example."""

from __future__ import annotations

import numpy as np
import pytest

from ltexp.report.paired import paired_bootstrap


def test_paired_bootstrap_equals_a_direct_resampling_loop() -> None:
    a = np.array([1, 1, 0, 1, 0, 1, 1, 0], dtype=float)  # 5/8
    b = np.array([1, 0, 0, 1, 0, 0, 1, 0], dtype=float)  # 3/8
    result = paired_bootstrap(a, b, samples=500, seed=7)
    rng = np.random.default_rng(7)
    diffs = []
    for _ in range(500):  # the definition: resample images jointly, difference of the means
        idx = rng.integers(0, 8, size=8)
        diffs.append(a[idx].mean() - b[idx].mean())
    low, high = np.quantile(diffs, [0.025, 0.975])
    assert result.diff == pytest.approx(0.25)
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high))
    assert result.n == 8


def test_joint_resampling_is_tighter_than_independent_and_flags_a_real_difference() -> None:
    rng = np.random.default_rng(0)
    b = (rng.random(2000) < 0.6).astype(float)
    a = b.copy()
    a[rng.choice(np.flatnonzero(b == 0), 60, replace=False)] = 1  # a fixes 60 of b's errors
    result = paired_bootstrap(a, b, samples=300, seed=1)
    assert result.diff == pytest.approx(0.03) and result.excludes_zero
    # the same difference, resampled independently, would not exclude 0 as clearly
    independent = np.quantile(
        [
            a[rng.integers(0, 2000, 2000)].mean() - b[rng.integers(0, 2000, 2000)].mean()
            for _ in range(300)
        ],
        [0.025, 0.975],
    )
    assert result.ci_high - result.ci_low < (independent[1] - independent[0]) / 2
    same = paired_bootstrap(b, b, samples=100)
    assert same.diff == 0 and not same.excludes_zero


def test_several_seeds_average_each_image_first() -> None:
    a = np.array([[1, 0, 1, 1], [1, 1, 0, 1]], dtype=float)
    b = np.array([[0, 0, 1, 1], [1, 0, 0, 0]], dtype=float)
    result = paired_bootstrap(a, b, samples=200, seed=0)
    assert result.diff == pytest.approx(((a - b).mean(axis=0)).mean())
    with pytest.raises(ValueError, match="differ in shape"):
        paired_bootstrap(a, b[:, :3])
    assert paired_bootstrap(np.zeros(0), np.zeros(0)).n == 0
