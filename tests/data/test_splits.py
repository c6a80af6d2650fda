"""The split protocol of SPEC.md: counts, nesting, groups, determinism, profiles, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from ltexp.data.splits import SPLITS, Protocol, build_splits, profile_counts
from ltexp.errors import ConfigError, DataError

CIFAR_TRAIN = np.repeat(np.arange(100), 500)
CIFAR_TEST = np.repeat(np.arange(100), 100)
SPEC_COUNTS = {
    "train_balanced": 45_000,
    "test_balanced": 5_000,
    "val": 10_000,
    "train_lt": 9_754,
    "test_lt": 1_051,
    "test_head": 844,
    "test_middle": 169,
    "test_tail": 38,
}


def test_cifar100_counts_match_spec() -> None:
    plan = build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol())
    assert {s: len(plan.indices[s]) for s in SPLITS} == SPEC_COUNTS
    assert [len(plan.groups[g]) for g in ("head", "middle", "tail")] == [33, 33, 34]


def test_exp_profile_is_the_spec_formula() -> None:
    counts = profile_counts("exp", 450, 100, 100.0)
    assert counts.tolist() == [int(450 * 100 ** (-i / 99)) for i in range(100)]
    assert counts[0] == 450 and counts[-1] == 4
    # docs/protocol.md: the realised ratios after flooring, not the nominal 100
    assert counts[0] / counts[-1] == 112.5
    plan = build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol())
    test_lt = plan.per_class("test_lt", CIFAR_TRAIN)
    assert max(test_lt) / min(test_lt) == 50 / 1


def test_splits_are_nested_and_disjoint() -> None:
    plan = build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol())
    idx = {s: set(plan.indices[s].tolist()) for s in SPLITS}
    assert idx["train_lt"] <= idx["train_balanced"]
    assert idx["test_lt"] <= idx["test_balanced"]
    assert not idx["train_balanced"] & idx["test_balanced"]
    assert idx["test_head"] | idx["test_middle"] | idx["test_tail"] == idx["test_lt"]
    assert len(plan.indices["test_head"]) + len(plan.indices["test_middle"]) + len(
        plan.indices["test_tail"]
    ) == len(plan.indices["test_lt"])


def test_per_class_counts_follow_rank() -> None:
    plan = build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol())
    per_class = plan.per_class("train_lt", CIFAR_TRAIN)
    assert per_class == profile_counts("exp", 450, 100, 100.0).tolist()
    assert plan.per_class("test_lt", CIFAR_TRAIN) == [
        max(1, int(50 * 100 ** (-i / 99))) for i in range(100)
    ]


def test_shot_groups_follow_train_lt_counts() -> None:
    plan = build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol())
    counts = np.array(plan.per_class("train_lt", CIFAR_TRAIN))
    assert plan.groups["many"] == np.flatnonzero(counts > 100).tolist()
    assert plan.groups["medium"] == np.flatnonzero((counts >= 20) & (counts <= 100)).tolist()
    assert plan.groups["few"] == np.flatnonzero(counts < 20).tolist()


def test_same_seed_same_indices_other_seed_different() -> None:
    a = build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol(seed=42))
    b = build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol(seed=42))
    c = build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol(seed=7))
    for s in SPLITS:
        assert np.array_equal(a.indices[s], b.indices[s])
    assert not np.array_equal(a.indices["train_lt"], c.indices["train_lt"])
    assert len(a.indices["train_lt"]) == len(c.indices["train_lt"])


def test_class_order_random_and_explicit() -> None:
    plan = build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol(class_order="random"))
    counts = plan.per_class("train_lt", CIFAR_TRAIN)
    assert counts[plan.class_rank[0]] == 450 and counts[plan.class_rank[-1]] == 4
    assert sorted(plan.class_rank.tolist()) == list(range(100))
    order = ",".join(str(c) for c in reversed(range(100)))
    rev = build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol(class_order=order))
    assert rev.per_class("train_lt", CIFAR_TRAIN)[99] == 450
    assert rev.groups["head"] == list(range(67, 100))


@pytest.mark.parametrize("profile", ["exp", "pareto", "step"])
def test_profiles_span_the_imbalance_ratio(profile: str) -> None:
    counts = profile_counts(profile, 400, 20, 40.0)
    assert counts[0] == 400 and counts[-1] == 10
    assert all(np.diff(counts) <= 0)  # non-increasing with rank


def test_step_profile_has_two_levels() -> None:
    counts = profile_counts("step", 200, 10, 10.0)
    assert counts.tolist() == [200] * 5 + [20] * 5


def test_pareto_is_more_skewed_than_exp_at_the_head() -> None:
    exp = profile_counts("exp", 1000, 50, 100.0)
    pareto = profile_counts("pareto", 1000, 50, 100.0, pareto_alpha=6.0)
    assert pareto[5] < exp[5]  # the Pareto density falls fast, then flattens


@pytest.mark.parametrize("profile", ["exp", "pareto", "step"])
def test_ratio_one_is_balanced(profile: str) -> None:
    assert set(profile_counts(profile, 120, 10, 1.0).tolist()) == {120}


def test_bad_ratio_profile_and_sizes() -> None:
    with pytest.raises(ConfigError, match="imbalance_ratio must be >= 1"):
        build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol(imbalance_ratio=0.5))
    with pytest.raises(ConfigError, match="unknown imbalance profile 'expo'"):
        build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol(profile="expo"))
    with pytest.raises(ConfigError, match="must be >= 1"):
        build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol(n_train=0))
    with pytest.raises(DataError, match="fewer than n_max_train"):
        build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol(n_train=480, n_test=50))
    with pytest.raises(ConfigError, match="class_order"):
        build_splits(CIFAR_TRAIN, CIFAR_TEST, Protocol(class_order="1,2,3"))


def test_max_per_class_cuts_every_split_after_the_protocol_s_split() -> None:
    """Issue 41: a CPU rehearsal of the protocol keeps at most N images per class in each of
    train, val and the test sets, a subset of the protocol's own splits."""
    from ltexp.data.splits import cut_per_class

    train = np.repeat(np.arange(100), 500)
    test = np.repeat(np.arange(100), 100)
    full = build_splits(train, test, Protocol())
    cut = cut_per_class(full, {"train": train, "test": test}, 2)
    for split, index in cut.indices.items():
        source = test if split == "val" else train
        assert set(index) <= set(full.indices[split])  # a subset of the protocol's split
        assert np.bincount(source[index]).max() <= 2, split
    assert set(cut.indices["test_tail"]) <= set(cut.indices["test_lt"])
    assert len(cut.indices["val"]) == 200 and len(cut.indices["train_lt"]) <= 200
