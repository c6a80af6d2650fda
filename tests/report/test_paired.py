"""Paired differences: against a direct computation on small examples, and, by simulation of
methods that differ only by training noise, a false-difference rate at most the nominal 5 %."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

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


def test_several_seeds_average_each_side_first_and_add_the_seeds_spread() -> None:
    a = np.array([[1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 1]], dtype=float)  # 3 seeds
    b = np.array([[0, 0, 1, 1], [1, 0, 0, 0]], dtype=float)  # 2 seeds
    result = paired_bootstrap(a, b, samples=200, seed=0)
    assert result.diff == pytest.approx(a.mean() - b.mean())
    assert result.seeds == (3, 2) and result.training_noise
    # independently: Welch's t over the seeds' accuracies, plus the images' bootstrap variance
    acc_a, acc_b = a.mean(axis=1), b.mean(axis=1)
    va, vb = acc_a.var(ddof=1) / 3, acc_b.var(ddof=1) / 2
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 1)
    rng = np.random.default_rng(0)
    per_image = a.mean(axis=0) - b.mean(axis=0)
    boot = [per_image[rng.integers(0, 4, 4)].mean() for _ in range(200)]
    half = stats.t.ppf(0.975, dof) * np.sqrt(va + vb + np.var(boot, ddof=1))
    assert (result.ci_low, result.ci_high) == pytest.approx(
        (result.diff - half, result.diff + half)
    )
    with pytest.raises(ValueError, match="differ in images"):
        paired_bootstrap(a, b[:, :3])
    assert paired_bootstrap(np.zeros(0), np.zeros(0)).n == 0


def test_one_seed_a_side_covers_the_test_images_only_and_is_never_significant() -> None:
    rng = np.random.default_rng(0)
    b = (rng.random(2000) < 0.6).astype(float)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:200]] = 1  # a is 10 points better on these images
    result = paired_bootstrap(a, b, samples=300, seed=1)
    assert result.excludes_zero and not result.training_noise and not result.significant


def _seed_noise_only(rng: np.random.Generator, seeds: int, images: int = 1000) -> np.ndarray:
    """0/1 correctness of ``seeds`` models of one method: a shared per-image ease, and per
    model a small overall shift and its own per-image noise (another seed errs elsewhere)."""
    ease = _EASE[:images]
    shift = rng.normal(0.0, 0.08, size=(seeds, 1))
    noise = rng.normal(0.0, 0.9, size=(seeds, images))
    return (ease + shift + noise > 0).astype(float)


_EASE = np.random.default_rng(123).normal(0.4, 1.5, size=5000)  # one fixed test set


@pytest.mark.parametrize("seeds", [1, 2, 3, 5])
def test_methods_that_differ_only_by_seed_noise_are_marked_at_most_5_percent_of_the_time(
    seeds: int,
) -> None:
    """Two methods drawn from the same training distribution: a mark is a false difference."""
    rng = np.random.default_rng(seeds)
    trials, marked, test_only = 300, 0, 0
    for trial in range(trials):
        a, b = _seed_noise_only(rng, seeds), _seed_noise_only(rng, seeds)
        result = paired_bootstrap(a, b, samples=200, seed=trial)
        marked += result.significant
        test_only += result.excludes_zero and not result.training_noise
    # at most 5 %, with a binomial allowance for 300 trials (2 standard errors)
    assert marked / trials <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / trials)
    if seeds == 1:
        # what the report no longer marks: a one-seed interval "excludes 0" far more often
        assert marked == 0 and test_only / trials > 0.15
