"""How sure a result is: intervals and tests for accuracies measured over seeds and test images.

A cell of the study is S trained models (one per seed) tested on the same N images: its
correctness is an S × N matrix of 0/1. An accuracy has two sources of noise, and the design is
crossed (every seed sees every image), so the variance of a mean accuracy has three parts
(a two-way random-effects model, Searle, Casella & McCulloch 1992, ch. 4):

- ``σ²_seed / S``: how far a trained model's expected accuracy moves with its seed;
- ``σ²_image / N``: which images the test set happens to hold;
- ``σ²_error / (S·N)``: each model's own errors on each image (another seed errs elsewhere).

From the matrix, ``MS_seed = N · Var_s(acc_s)`` estimates ``N σ²_seed + σ²_error`` and the
residual mean square ``MS_res`` estimates ``σ²_error``; ``Var_i(mean over seeds of image i) / N``
estimates the image and error parts together. Hence the variance of a cell's mean accuracy::

    V = Var_i(ā_i) / N + max(0, MS_seed − MS_res) / (N · S)

and of a paired difference ``A − B`` on the same images, with ``d_i = ā_i − b̄_i``::

    V = Var_i(d_i) / N + Σ_sides max(0, MS_seed − MS_res) / (N · S_side)

Counting the seeds' spread *and* the images' variance in full counts each model's own per-image
errors twice: the report's earlier test did, and with 3 seeds it found a true 1-point
difference 11 % of the time. The degrees of freedom are Satterthwaite's (1946), from each
``MS_seed`` (S − 1 each) and the image term (N − 1): few seeds give a wide t quantile only
insofar as their excess spread matters. A side with one seed borrows the other side's seed
variance; with one seed a side no seed variance can be estimated, so the interval covers the
test images only and marks nothing.

Intervals stay where the quantity can be, and never shrink to a point on a few images:

- a cell's accuracy: with one seed the exact binomial interval (Clopper & Pearson 1934); with
  several, the same interval at the effective number of images ``p(1 − p) / V`` (Korn &
  Graubard 1998), adjusted for the degrees of freedom and never more than N (so it is never
  narrower than one model's exact interval on these images, and never [0, 0] on 0/4);
- a paired difference: ``D̃ ± t_ν · √V`` computed with one pseudo-image that A gets right and B
  wrong and one the other way (Bonett & Price 2012's adjusted Wald interval for paired
  proportions, here with seeds), then limited to [−1, 1]; the difference reported is the raw
  one.

A difference is *marked* when its interval covers training noise (two seeds on a side or more)
and the family of the table's comparisons still rejects after Holm's (1979) step-down
correction; the uncorrected p-value is kept. The simulation of ``tests/test_statistics.py``
gives the false-mark rate and the power at 1, 2, 3 and 5 seeds (docs/protocol.md prints them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.optimize import brentq

from ltexp.evaluation import binomial_interval

LEVEL = 0.95  # every interval of the report
ALPHA = 1.0 - LEVEL


@dataclass(frozen=True)
class Interval:
    """A mean accuracy (or difference), its 95 % interval, and what the interval covers.

    Attributes:
        n: test images.
        seeds: seeds behind the value (for a difference: of A and of B).
        training_noise: the interval covers the seeds' noise too (two seeds or more on a side);
            else it covers test-set sampling of these trained models only.
        p_value: two-sided, uncorrected, of "no difference" (differences with training noise;
            NaN otherwise).
        dof: the degrees of freedom of the t quantile (NaN for an exact binomial interval).
    """

    value: float
    ci_low: float
    ci_high: float
    n: int
    seeds: tuple[int, ...] = (1,)
    training_noise: bool = False
    p_value: float = float("nan")
    dof: float = float("nan")

    @property
    def excludes_zero(self) -> bool:
        """The interval excludes 0 (whatever it covers)."""
        return self.n > 0 and (self.ci_low > 0 or self.ci_high < 0)


NO_IMAGES = Interval(float("nan"), float("nan"), float("nan"), 0)


def _matrix(correct: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.asarray(correct, dtype=np.float64))


def _seed_terms(c: np.ndarray) -> tuple[float, float]:
    """``(MS_seed, MS_res)`` of an S × N matrix (S ≥ 2)."""
    s, n = c.shape
    row = c.mean(axis=1)
    col = c.mean(axis=0)
    grand = row.mean()
    ms_seed = n * float(np.sum((row - grand) ** 2)) / (s - 1)
    if n < 2:
        return ms_seed, 0.0
    residual = c - row[:, None] - col[None, :] + grand
    ms_res = float(np.sum(residual**2)) / ((s - 1) * (n - 1))
    return ms_seed, ms_res


def _variance(per_image: np.ndarray, sides: Sequence[np.ndarray]) -> tuple[float, float, bool]:
    """``(V, ν, covers training noise)`` of the mean of ``per_image`` (a mean over seeds, or a
    difference of two), given the S × N matrices behind it (see the module docstring)."""
    n = per_image.size
    image_term = float(per_image.var(ddof=1)) / n if n > 1 else 0.0
    total = image_term
    # Satterthwaite: Σ (term²/dof); the image term's dof is N − 1
    spread = image_term**2 / (n - 1) if n > 1 else 0.0
    counts = [len(c) for c in sides]
    measured = [c for c in sides if len(c) > 1]
    if not measured:
        return total, float(max(n - 1, 1)), False
    borrowers = sum(1 / s for s in counts if s == 1)  # sides with one seed borrow the others'
    for c in measured:
        s = len(c)
        ms_seed, ms_res = _seed_terms(c)
        share = 1 / s + borrowers / len(measured)
        total += share * max(0.0, ms_seed - ms_res) / n
        spread += (share * ms_seed / n) ** 2 / (s - 1)
    dof = total**2 / spread if spread > 0 else float(max(n - 1, 1))
    return total, max(float(dof), 1.0), True


def accuracy_interval(correct: np.ndarray) -> Interval:
    """A cell's mean top-1 over its seeds and its 95 % interval.

    Args:
        correct: 0/1 per image, ``(N,)`` for one seed or ``(S, N)`` for S seeds on the same
            images.

    Returns:
        One seed: the Clopper-Pearson interval. Several: Korn & Graubard's interval at the
        effective number of images (see the module docstring), covering seeds and images.
    """
    c = _matrix(correct)
    s, n = c.shape
    if n == 0:
        return NO_IMAGES
    if s == 1:
        hits = int(c.sum())
        low, high = binomial_interval(hits, n, LEVEL)
        return Interval(hits / n, low, high, n)
    per_image = c.mean(axis=0)
    p = float(per_image.mean())
    variance, dof, _ = _variance(per_image, [c])
    effective = float(n)
    if variance > 0 and 0 < p < 1:
        ratio = stats.t.ppf(1 - ALPHA / 2, max(n - 1, 1)) / stats.t.ppf(1 - ALPHA / 2, dof)
        effective = min(float(n), p * (1 - p) / variance * ratio**2)
    low, high = _beta_interval(p * effective, effective)
    return Interval(p, low, high, n, (s,), True, dof=dof)


def _beta_interval(hits: float, n: float) -> tuple[float, float]:
    """Clopper-Pearson's interval for a (possibly fractional) count of ``hits`` in ``n``."""
    low = 0.0 if hits <= 0 else float(stats.beta.ppf(ALPHA / 2, hits, n - hits + 1))
    high = 1.0 if hits >= n else float(stats.beta.ppf(1 - ALPHA / 2, hits + 1, n - hits))
    return low, high


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray) -> Interval:
    """``acc(A) − acc(B)`` on the same images, each side averaged over its seeds.

    Args:
        correct_a: 0/1 per image of A, ``(N,)`` or ``(S, N)`` for S seeds.
        correct_b: the same of B; image i of A and of B is the same image (A and B may have
            different numbers of seeds).

    Returns:
        The raw difference and its 95 % interval within [−1, 1] (see the module docstring);
        ``training_noise`` and a p-value when a side has two seeds or more.
    """
    a, b = _matrix(correct_a), _matrix(correct_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired predictions differ in images: {a.shape} vs {b.shape}")
    n = a.shape[1]
    seeds = (len(a), len(b))
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, seeds)
    raw = float(a.mean(axis=0).mean() - b.mean(axis=0).mean())
    # one pseudo-image each way (Bonett & Price 2012): never a zero-width interval
    a = np.hstack([a, np.ones((len(a), 1)), np.zeros((len(a), 1))])
    b = np.hstack([b, np.zeros((len(b), 1)), np.ones((len(b), 1))])
    per_image = a.mean(axis=0) - b.mean(axis=0)
    centre = float(per_image.mean())
    variance, dof, noise = _variance(per_image, [a, b])
    se = float(np.sqrt(variance))
    half = float(stats.t.ppf(1 - ALPHA / 2, dof)) * se
    p_value = float(2 * stats.t.sf(abs(centre) / se, dof)) if noise else float("nan")
    low, high = max(-1.0, centre - half), min(1.0, centre + half)
    return Interval(raw, low, high, n, seeds, noise, p_value, dof)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values: rejecting where the adjusted value is below α
    keeps the family-wise error at α. NaN stays NaN and does not count in the family."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    if not len(tested):
        return out
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


# --- the simulation behind docs/protocol.md's tables -------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """Two methods as a simulation draws them (a probit model of each model's correctness).

    Each trial draws a new test set: image i's ease for method B is ``0.4 + 1.5 z_i``, and for
    A the same with correlation ``image_correlation`` (below 1: the methods get different
    images right, "trading images") plus a shift giving A ``effect`` more expected accuracy.
    Each trained model adds its own shift ``N(0, seed_sd)`` and its own per-image errors
    ``N(0, 0.9)``: on 5,000 images, two seeds then differ by about 0.5 points, as on CIFAR-100.
    """

    name: str
    effect: float = 0.0
    image_correlation: float = 1.0
    seed_sd: float = 0.0

    def shift(self) -> float:
        """The latent shift that gives A ``effect`` more expected accuracy than B."""
        scale = float(np.sqrt(1.5**2 + 0.9**2 + self.seed_sd**2))
        base = stats.norm.cdf(0.4 / scale)
        if self.effect == 0:
            return 0.0
        return float(
            brentq(lambda d: stats.norm.cdf((0.4 + d) / scale) - base - self.effect, -5, 5)
        )


def simulate_marks(
    scenario: Scenario, seeds: int, trials: int, images: int = 5000, seed: int = 0
) -> float:
    """How often :func:`paired_difference` marks A − B (covers training noise and its 95 %
    interval excludes 0, uncorrected) over ``trials`` simulated studies with ``seeds`` seeds a
    side: the false-mark rate when ``scenario.effect`` is 0, else the power."""
    rng = np.random.default_rng(seed)
    shift = scenario.shift()
    rho = scenario.image_correlation
    marked = 0
    for _ in range(trials):
        shared, own_a, own_b = rng.normal(size=(3, images))
        ease_b = 0.4 + 1.5 * (rho * shared + np.sqrt(1 - rho**2) * own_b)
        ease_a = 0.4 + 1.5 * (rho * shared + np.sqrt(1 - rho**2) * own_a) + shift
        a, b = (
            ease + rng.normal(0, scenario.seed_sd, (seeds, 1)) + rng.normal(0, 0.9, (seeds, images))
            > 0
            for ease in (ease_a, ease_b)
        )
        result = paired_difference(a, b)
        marked += result.training_noise and result.p_value < ALPHA
    return marked / trials
