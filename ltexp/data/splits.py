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

Sets that are long-tailed as given (``mode="given"``: ImageNet-LT, iNaturalist, most users' own
folders) keep their training set: ``train_lt`` is the given train set, less what is carved from it.

- ``val``: the set's own validation set, or carved per class from train (``holdout_fraction``).
- The test set: the set's own, or carved per class from train. A test set with the same number of
  images in every class is ``test_balanced`` (ImageNet-LT, Places-LT); any other is ``test_lt``.
  The split the set lacks is empty, and evaluation and the report follow what the set has.
- ``train_balanced``: empty (balanced training is refused), unless ``n_max_train`` asks for it: a
  seeded ``n_max_train`` images of every class of train_lt.
- The frequency ranking is the given train counts (most first, ties by label); the class groups
  and the group test splits come from the test split the set has (``group_split``).

Every random choice uses its own generator seeded by ``(seed, stage, class)``, so a split can be
rebuilt bit for bit from the seed, and changing one class never moves another.
"""

from __future__ import annotations

import dataclasses
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

_STAGE_BALANCED, _STAGE_TRAIN_LT, _STAGE_TEST_LT, _STAGE_ORDER, _STAGE_CARVE = 1, 2, 3, 4, 5

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
    mode: str = "protocol"  # or "given": the set is long-tailed as given (module docstring)
    holdout_fraction: float = 0.1  # given mode: share of each class carved for a missing val/test
    max_per_class: int = 0  # a rehearsal: at most this many per class in every split (0: all)


@dataclass
class SplitPlan:
    """The splits as index arrays into the source sets, and the class groups.

    Attributes:
        indices: split name → sorted int64 indices into its source set (``sources``).
        class_rank: class_rank[r] = label of the class with frequency rank r.
        groups: group name (head, middle, tail, many, medium, few) → sorted labels.
        sources: split name → the source set (``train``, ``val``, ``test``) it indexes.
        group_split: the test split the class-group metrics are computed on.
    """

    protocol: Protocol
    num_classes: int
    indices: dict[str, np.ndarray]
    class_rank: np.ndarray
    groups: dict[str, list[int]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=lambda: dict(SPLIT_SOURCE))
    group_split: str = "test_lt"

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


def _carve(n: int, fraction: float, parts: int) -> int:
    """Images a class gives to each carved split: a ``fraction`` of its ``n``, at least one
    while the class keeps one for training, none when it cannot spare one per part."""
    if parts == 0 or n <= parts:
        return 0
    return min(max(1, int(np.floor(fraction * n + 1e-9))), (n - 1) // parts)


def build_given_splits(
    labels: dict[str, np.ndarray], num_classes: int, protocol: Protocol
) -> SplitPlan:
    """The splits of a set that is long-tailed as given (see the module docstring).

    Args:
        labels: ``train`` and, where the set has them, ``val`` and ``test`` labels.
        num_classes: classes of the set (labels ``0..K-1``).

    Raises:
        DataError: a class without training images, a val/test class train lacks, fewer than
            two classes, a class too small for the requested balanced set.
        ConfigError: a holdout fraction outside (0, 0.5].
    """
    train = labels["train"]
    counts = np.bincount(train, minlength=num_classes)
    if num_classes < 2:
        raise DataError(f"the set has {num_classes} class; classification needs at least 2")
    empty = np.flatnonzero(counts == 0).tolist()
    if empty:
        raise DataError(
            f"classes {empty[:10]} have no training images; every class needs at least one"
        )
    if not 0 < protocol.holdout_fraction <= 0.5:
        raise ConfigError(
            f"holdout_fraction must be in (0, 0.5], got {protocol.holdout_fraction:g}"
        )
    carved = [s for s in ("val", "test") if len(labels.get(s, ())) == 0]
    parts: dict[str, list[np.ndarray]] = {"train_lt": [], **{s: [] for s in carved}}
    for c in range(num_classes):
        own = _rng(protocol.seed, _STAGE_CARVE, c).permutation(np.flatnonzero(train == c))
        k = _carve(len(own), protocol.holdout_fraction, len(carved))
        for i, s in enumerate(carved):
            parts[s].append(own[i * k : (i + 1) * k])
        parts["train_lt"].append(own[len(carved) * k :])
    indices = {s: np.sort(np.concatenate(p)).astype(np.int64) for s, p in parts.items()}
    for s in carved:  # a class spares an image only when it keeps one for training
        if not len(indices[s]):
            most = int(np.bincount(train, minlength=num_classes).max())
            raise DataError(
                f"the set has no {s} images and none can be carved from train: its largest "
                f"class has {most} training image(s), and a class gives one to each missing set "
                f"only when it keeps one to train on; add a {s}/ folder (or list) or more images"
            )
    sources = {"train_lt": "train", "train_balanced": "train"}
    for s in ("val", "test"):
        if s in carved:
            sources[s] = "train"
        else:
            indices[s] = np.arange(len(labels[s]), dtype=np.int64)
            sources[s] = s
    test_labels = labels[sources["test"]][indices["test"]]
    test_counts = np.bincount(test_labels, minlength=num_classes)
    train_counts = np.bincount(train[indices["train_lt"]], minlength=num_classes)
    for s in ("val", "test"):
        own = np.bincount(labels[sources[s]][indices[s]], minlength=num_classes)
        unknown = np.flatnonzero((own > 0) & (train_counts == 0)).tolist()
        if unknown:
            raise DataError(f"{s} has classes {unknown[:10]} that train does not have")
    balanced_test = "test" not in carved and (test_counts == test_counts[0]).all()
    test_split = "test_balanced" if balanced_test else "test_lt"
    other = "test_lt" if balanced_test else "test_balanced"
    indices[test_split], sources[test_split] = indices.pop("test"), sources.pop("test")
    indices[other], sources[other] = np.zeros(0, dtype=np.int64), sources[test_split]

    indices["train_balanced"] = np.zeros(0, dtype=np.int64)
    if protocol.n_train:  # asked for: the same number of images from every class
        if train_counts.min() < protocol.n_train:
            raise DataError(
                f"n_max_train={protocol.n_train} asks for a balanced training set, but class "
                f"{int(train_counts.argmin())} has {int(train_counts.min())} training images;"
                f" lower n_max_train to at most {int(train_counts.min())}"
            )
        lt_idx = indices["train_lt"]
        indices["train_balanced"] = np.sort(
            np.concatenate(
                [
                    _rng(protocol.seed, _STAGE_BALANCED, c).permutation(lt_idx[train[lt_idx] == c])[
                        : protocol.n_train
                    ]
                    for c in range(num_classes)
                ]
            )
        ).astype(np.int64)

    rank = np.array(sorted(range(num_classes), key=lambda c: (-int(train_counts[c]), c)))
    groups = class_groups(train_counts, rank)
    for g in FREQUENCY_GROUPS:
        keep = np.isin(test_labels, groups[g])
        indices[f"test_{g}"] = indices[test_split][keep]
        sources[f"test_{g}"] = sources[test_split]
    return SplitPlan(
        protocol,
        num_classes,
        {s: indices[s] for s in SPLITS},
        rank,
        groups,
        {s: sources[s] for s in SPLITS},
        test_split,
    )


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


def cut_per_class(plan: SplitPlan, labels: dict[str, np.ndarray], n: int) -> SplitPlan:
    """The plan with at most ``n`` images of each class in every split, the first ones in
    index order (a deterministic subset of the protocol's split, for a rehearsal on a CPU); the
    class-group test splits follow their long-tailed test split.

    Args:
        labels: the source sets' labels (``train``, ``val``, ``test``), which the splits index.
    """
    if n <= 0:
        return plan
    cut = {}
    for split, index in plan.indices.items():
        own = labels[plan.sources.get(split, SPLIT_SOURCE.get(split, "train"))][index]
        keep = np.zeros(len(index), dtype=bool)
        for c in np.unique(own):
            keep[np.flatnonzero(own == c)[:n]] = True
        cut[split] = index[keep]
    group_of = plan.group_split if plan.group_split in cut else "test_lt"
    for g in FREQUENCY_GROUPS:
        if f"test_{g}" in cut and group_of in cut:
            cut[f"test_{g}"] = plan.indices[f"test_{g}"][
                np.isin(plan.indices[f"test_{g}"], cut[group_of])
            ]
    return dataclasses.replace(plan, indices=cut)
