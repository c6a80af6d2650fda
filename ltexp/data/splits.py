"""The split protocol (docs/protocol.md): balanced, long-tailed and group splits as index arrays.

From a source train set and a source test set (``ltexp.data.sources``):

- ``train_balanced`` / ``test_balanced``: per class, a seeded shuffle of its source-train images;
  the first ``n_train`` go to train_balanced, the next ``n_test`` to test_balanced.
- ``val``: the whole source test set (model selection).
- ``train_lt`` / ``test_lt``: per class, a seeded random subset of its balanced images, of the
  size the imbalance profile gives to the class's frequency rank (nested by construction).
- ``test_head`` / ``test_middle`` / ``test_tail``: test_lt restricted to the classes in each third
  of the frequency ranking (33 / 33 / 34 of 100).
- The literature's shot groups by train_lt count: many (> 100), medium (20–100), few (< 20).

Every random choice uses its own generator seeded by ``(seed, stage, class)``, so a split can be
rebuilt bit for bit from the seed, and changing one class never moves another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ltexp.errors import ConfigError, DataError, unknown_name_error

SPLITS = (
    "train_balanced",
    "test_balanced",
    "val",
    "train_lt",
    "test_lt",
    "test_head",
    "test_middle",
    "test_tail",
)
SPLIT_SOURCE = {
    "train_balanced": "train",
    "test_balanced": "train",
    "val": "test",
    "train_lt": "train",
    "test_lt": "train",
    "test_head": "train",
    "test_middle": "train",
    "test_tail": "train",
}
# The splits a later step reads; the group splits (test_head/middle/tail) are test_lt restricted
# to a group's classes, recorded in the manifest (sizes, digests) and never loaded on their own.
LOADED_SPLITS = SPLITS[:5]
# train_split option → the split a model is trained on
TRAINING_SETS = {"lt": "train_lt", "balanced": "train_balanced"}
FREQUENCY_GROUPS = ("head", "middle", "tail")
SHOT_GROUPS = ("many", "medium", "few")
GROUPS = FREQUENCY_GROUPS + SHOT_GROUPS
# Shot thresholds of the literature (Liu et al. 2019, OLTR): many > 100, few < 20 train images.
MANY_SHOT_MIN = 101
FEW_SHOT_MAX = 19

_STAGE_BALANCED, _STAGE_TRAIN_LT, _STAGE_TEST_LT, _STAGE_ORDER = 1, 2, 3, 4

# --------------------------------------------------------------------------------------------
# Imbalance profiles: ``profile(n_max, num_classes, imbalance_ratio, **options) -> float sizes``
# by frequency rank (rank 0 = most frequent); the protocol floors them to whole images.

PROFILES: dict[str, Callable[..., np.ndarray]] = {}


def register_profile(name: str):
    """Decorator registering an imbalance profile."""

    def decorate(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        PROFILES[name] = fn
        return fn

    return decorate


@register_profile("exp")
def exp_profile(n_max: int, num_classes: int, imbalance_ratio: float, **_: float) -> np.ndarray:
    """``n_i = n_max · IR^(−i/(K−1))`` (Cao et al. 2019, CIFAR-LT)."""
    i = np.arange(num_classes)
    return n_max * imbalance_ratio ** (-i / max(num_classes - 1, 1))


@register_profile("pareto")
def pareto_profile(
    n_max: int, num_classes: int, imbalance_ratio: float, pareto_alpha: float = 6.0, **_: float
) -> np.ndarray:
    """Pareto-shaped sizes (ImageNet-LT, Liu et al. 2019, shape α = 6), deterministic.

    Sizes follow the Pareto density ``x^−(α+1)`` on evenly spaced points ``x ∈ [1, x_K]``, with
    ``x_K`` chosen so that the first and last classes differ by exactly ``IR``. Larger α puts more
    classes near the tail.
    """
    x_max = imbalance_ratio ** (1.0 / (pareto_alpha + 1.0))
    x = np.linspace(1.0, x_max, num_classes)
    return n_max * x ** -(pareto_alpha + 1.0)


@register_profile("step")
def step_profile(n_max: int, num_classes: int, imbalance_ratio: float, **_: float) -> np.ndarray:
    """Half the classes at ``n_max``, the rest at ``n_max / IR`` (Buda et al. 2018)."""
    sizes = np.full(num_classes, float(n_max))
    sizes[num_classes // 2 :] = n_max / imbalance_ratio
    return sizes


def profile_counts(
    profile: str, n_max: int, num_classes: int, imbalance_ratio: float, pareto_alpha: float = 6.0
) -> np.ndarray:
    """Whole image counts by rank: ``max(1, int(size))`` of the profile's sizes."""
    if profile not in PROFILES:
        raise unknown_name_error("imbalance profile", profile, list(PROFILES))
    if imbalance_ratio < 1:
        raise ConfigError(f"imbalance_ratio must be >= 1 (1 = balanced), got {imbalance_ratio}")
    sizes = PROFILES[profile](n_max, num_classes, imbalance_ratio, pareto_alpha=pareto_alpha)
    # a tiny epsilon keeps exact products (450 · 100^0 = 450) from flooring one image down
    return np.maximum(1, np.floor(sizes + 1e-9)).astype(np.int64)


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """Everything that decides the splits, recorded with them."""

    profile: str = "exp"
    imbalance_ratio: float = 100.0
    pareto_alpha: float = 6.0
    n_train: int = 450
    n_test: int = 50
    seed: int = 42
    class_order: str = "label"


@dataclass
class SplitPlan:
    """The splits as index arrays into the source sets, and the class groups.

    Attributes:
        indices: split name → sorted int64 indices into its source set (``SPLIT_SOURCE``).
        class_rank: class_rank[r] = label of the class with frequency rank r.
        groups: group name (head, middle, tail, many, medium, few) → sorted labels.
    """

    protocol: Protocol
    num_classes: int
    indices: dict[str, np.ndarray]
    class_rank: np.ndarray
    groups: dict[str, list[int]] = field(default_factory=dict)

    def per_class(self, split: str, labels: np.ndarray) -> list[int]:
        """Images per class (indexed by label) of ``split``, given its source labels."""
        counts = np.bincount(labels[self.indices[split]], minlength=self.num_classes)
        return [int(c) for c in counts]


def _rng(seed: int, stage: int, cls: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, cls])


def resolve_class_order(class_order: str, num_classes: int, seed: int) -> np.ndarray:
    """Labels by frequency rank: ``label``, ``random`` (seeded) or a comma list of labels."""
    if class_order == "label":
        return np.arange(num_classes)
    if class_order == "random":
        return _rng(seed, _STAGE_ORDER, 0).permutation(num_classes)
    try:
        order = np.array([int(v) for v in class_order.split(",")], dtype=np.int64)
    except ValueError:
        raise ConfigError(
            f"class_order must be 'label', 'random' or a comma list of labels, got {class_order!r}"
        ) from None
    if sorted(order.tolist()) != list(range(num_classes)):
        raise ConfigError(
            f"class_order must list every label 0..{num_classes - 1} once, got {len(order)} values"
        )
    return order


def build_splits(
    train_labels: np.ndarray, test_labels: np.ndarray, protocol: Protocol
) -> SplitPlan:
    """Build every split of the protocol (see the module docstring).

    Raises:
        ConfigError: sizes below 1, an unknown profile, a bad class order.
        DataError: a class has fewer source images than ``n_train + n_test``.
    """
    if protocol.n_train < 1 or protocol.n_test < 1:
        raise ConfigError(
            f"n_max_train and n_max_test must be >= 1, got {protocol.n_train} and {protocol.n_test}"
        )
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    rank = resolve_class_order(protocol.class_order, num_classes, protocol.seed)
    train_counts = profile_counts(
        protocol.profile,
        protocol.n_train,
        num_classes,
        protocol.imbalance_ratio,
        protocol.pareto_alpha,
    )
    test_counts = profile_counts(
        protocol.profile,
        protocol.n_test,
        num_classes,
        protocol.imbalance_ratio,
        protocol.pareto_alpha,
    )
    needed = protocol.n_train + protocol.n_test
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    lt_count = np.zeros(num_classes, dtype=np.int64)
    for r, c in enumerate(rank):
        own = np.flatnonzero(train_labels == c)
        if len(own) < needed:
            raise DataError(
                f"class {c} has {len(own)} source train images, fewer than "
                f"n_max_train + n_max_test = {protocol.n_train} + {protocol.n_test};"
                f" lower them"
            )
        shuffled = _rng(protocol.seed, _STAGE_BALANCED, c).permutation(own)
        train_bal, test_bal = shuffled[: protocol.n_train], shuffled[protocol.n_train : needed]
        parts["train_balanced"].append(train_bal)
        parts["test_balanced"].append(test_bal)
        parts["train_lt"].append(
            _rng(protocol.seed, _STAGE_TRAIN_LT, c).permutation(train_bal)[: train_counts[r]]
        )
        parts["test_lt"].append(
            _rng(protocol.seed, _STAGE_TEST_LT, c).permutation(test_bal)[: test_counts[r]]
        )
        lt_count[c] = train_counts[r]
    indices = {s: np.sort(np.concatenate(p)).astype(np.int64) for s, p in parts.items() if p}
    indices["val"] = np.arange(len(test_labels), dtype=np.int64)

    groups = class_groups(lt_count, rank)
    test_lt_labels = train_labels[indices["test_lt"]]
    for g in FREQUENCY_GROUPS:
        indices[f"test_{g}"] = indices["test_lt"][np.isin(test_lt_labels, groups[g])]
    return SplitPlan(protocol, num_classes, {s: indices[s] for s in SPLITS}, rank, groups)


def class_groups(train_counts: np.ndarray, rank: np.ndarray) -> dict[str, list[int]]:
    """Head/middle/tail (thirds of the frequency ranking) and many/medium/few (shot counts)."""
    k = len(train_counts)
    # sort by count, most frequent first; ties keep the protocol's rank order
    order = sorted(range(k), key=lambda r: (-int(train_counts[rank[r]]), r))
    ranked = [int(rank[r]) for r in order]
    third = k // 3
    groups = {
        "head": ranked[:third],
        "middle": ranked[third : 2 * third],
        "tail": ranked[2 * third :],
    }
    groups["many"] = [c for c in range(k) if train_counts[c] >= MANY_SHOT_MIN]
    groups["medium"] = [c for c in range(k) if FEW_SHOT_MAX < train_counts[c] < MANY_SHOT_MIN]
    groups["few"] = [c for c in range(k) if train_counts[c] <= FEW_SHOT_MAX]
    return {g: sorted(v) for g, v in groups.items()}
