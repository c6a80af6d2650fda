"""Every registered loss against a float64 reference written from its formula (SPEC.md)."""

from __future__ import annotations

import math

import pytest
import torch

from ltexp.errors import ConfigError
from ltexp.losses import LOSSES, ClassAwareLoss, adjust_logits, build_loss, list_losses

torch.set_default_dtype(torch.float32)
COUNTS = {
    4: [400, 90, 20, 3],
    10: [500, 300, 180, 100, 60, 35, 20, 12, 7, 4],
    100: [int(450 * 100 ** (-i / 99)) for i in range(100)],
}


# --- references: plain formulas, float64, one sample at a time ----------------------------------


def _log_softmax(z: list[float]) -> list[float]:
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def _mean_weight_one(w: list[float]) -> list[float]:
    return [v * len(w) / sum(w) for v in w]


def reference(name: str, z: torch.Tensor, y: torch.Tensor, counts: list[int], **hp: float) -> float:
    """Mean over the batch of the loss, computed per sample in float64 Python."""
    total = sum(counts)
    prior = [n / total for n in counts]
    out = 0.0
    for zi, yi in zip(z.double().tolist(), y.tolist(), strict=True):
        if name in ("ce", "wce", "cb", "cb_raw"):
            loss = -_log_softmax(zi)[yi]
            if name == "wce":
                loss *= _mean_weight_one([1 / p for p in prior])[yi]
            if name in ("cb", "cb_raw"):
                beta = hp.get("beta", 0.9999)
                weights = [(1 - beta) / (1 - beta**n) for n in counts]
                loss *= (_mean_weight_one(weights) if name == "cb" else weights)[yi]
        elif name == "focal":
            gamma = hp.get("gamma", 2.0)
            p = math.exp(_log_softmax(zi)[yi])
            loss = -((1 - p) ** gamma) * math.log(p)
        elif name in ("bs", "la"):
            tau = 1.0 if name == "bs" else hp.get("tau", 1.0)
            loss = -_log_softmax([v + tau * math.log(p) for v, p in zip(zi, prior, strict=True)])[
                yi
            ]
        elif name == "ldam":
            c_max, s = hp.get("max_margin", 0.5), hp.get("scale", 30.0)
            raw = [n**-0.25 for n in counts]
            delta = [c_max * r / max(raw) for r in raw]
            shifted = [v - (delta[yi] if k == yi else 0.0) for k, v in enumerate(zi)]
            loss = -_log_softmax([s * v for v in shifted])[yi]
        elif name == "seql":  # with gamma = 1 the mask is deterministic: every rare negative goes
            lam = hp.get("threshold", 0.005)
            keep = [k == yi or prior[k] >= lam for k in range(len(zi))]
            m = max(v for v, kp in zip(zi, keep, strict=True) if kp)
            lse = m + math.log(sum(math.exp(v - m) for v, kp in zip(zi, keep, strict=True) if kp))
            loss = lse - zi[yi]
        else:  # pragma: no cover - a new loss needs its reference here
            raise AssertionError(f"no reference for {name}")
        out += loss
    return out / len(y)


def _inputs(k: int, b: int = 16, scale: float = 3.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed + k)
    z = (torch.randn(b, k, generator=g) * scale).requires_grad_(True)
    y = torch.randint(0, k, (b,), generator=g)
    return z, y


def _ref_grad(name: str, z: torch.Tensor, y: torch.Tensor, counts: list[int], **hp: float):
    """Central finite differences of the float64 reference."""
    eps = 1e-6
    zd = z.detach().double()
    grad = torch.zeros_like(zd)
    for i in range(zd.shape[0]):
        for j in range(zd.shape[1]):
            plus, minus = zd.clone(), zd.clone()
            plus[i, j] += eps
            minus[i, j] -= eps
            grad[i, j] = (
                reference(name, plus, y, counts, **hp) - reference(name, minus, y, counts, **hp)
            ) / (2 * eps)
    return grad


DETERMINISTIC = {
    "ce": {},
    "wce": {},
    "cb": {},
    "cb_raw": {"beta": 0.99},
    "focal": {},
    "bs": {},
    "la": {"tau": 0.7},
    "ldam": {},
    "seql": {"gamma": 1.0, "threshold": 0.05},
}


def test_every_registered_loss_has_a_reference() -> None:
    assert set(list_losses()) == set(DETERMINISTIC)


@pytest.mark.parametrize("k", [4, 10, 100])
@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_value_matches_formula(name: str, k: int) -> None:
    z, y = _inputs(k)
    hp = DETERMINISTIC[name]
    got = build_loss(name, COUNTS[k], **hp)(z, y)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(reference(name, z, y, COUNTS[k], **hp), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_gradient_matches_formula(name: str) -> None:
    k = 4
    z, y = _inputs(k, b=5, scale=1.0)
    hp = DETERMINISTIC[name]
    build_loss(name, COUNTS[k], **hp)(z, y).backward()
    assert torch.allclose(z.grad.double(), _ref_grad(name, z, y, COUNTS[k], **hp), atol=2e-4)


@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_batch_loss_is_the_mean_over_samples(name: str) -> None:
    z, y = _inputs(10, b=12)
    loss = build_loss(name, COUNTS[10], **DETERMINISTIC[name])
    per_sample = torch.stack([loss(z[i : i + 1], y[i : i + 1]) for i in range(12)])
    assert loss(z, y).item() == pytest.approx(per_sample.mean().item(), rel=1e-6)


def test_class_weights_divide_by_batch_size_not_by_weight_sum() -> None:
    counts = COUNTS[4]
    z, y = _inputs(4, b=8)
    weighted = build_loss("wce", counts)(z, y)
    ce_each = torch.nn.functional.cross_entropy(z, y, reduction="none")
    w = torch.tensor([1 / n for n in counts], dtype=torch.float64)
    w = w * 4 / w.sum()
    assert w.mean().item() == pytest.approx(1.0)
    assert weighted.item() == pytest.approx((ce_each.double() * w[y]).sum().item() / 8, rel=1e-5)


@pytest.mark.parametrize("name,hp", [("wce", {}), ("cb", {}), ("bs", {}), ("la", {"tau": 2.0})])
def test_balanced_counts_reduce_to_cross_entropy(name: str, hp: dict) -> None:
    z, y = _inputs(10)
    balanced = [50] * 10
    assert build_loss(name, balanced, **hp)(z, y).item() == pytest.approx(
        build_loss("ce", balanced)(z, y).item(), rel=1e-6
    )


@pytest.mark.parametrize(
    "name,hp",
    [
        ("focal", {"gamma": 0.0}),
        ("seql", {"gamma": 0.0}),
        ("seql", {"threshold": 0.0}),
        ("ldam", {"max_margin": 0.0, "scale": 1.0}),
        ("la", {"tau": 0.0}),
        ("cb", {"beta": 0.0}),
    ],
)
def test_identities_with_cross_entropy(name: str, hp: dict) -> None:
    z, y = _inputs(100)
    assert build_loss(name, COUNTS[100], **hp)(z, y).item() == pytest.approx(
        build_loss("ce", COUNTS[100])(z, y).item(), rel=1e-6
    )


@pytest.mark.parametrize("name", list_losses())
def test_extreme_logits_give_finite_loss_and_gradients(name: str) -> None:
    k = 10
    g = torch.Generator().manual_seed(1)
    z = (torch.sign(torch.randn(32, k, generator=g)) * 1e4).requires_grad_(True)
    y = torch.randint(0, k, (32,), generator=g)
    loss = build_loss(name, COUNTS[k])(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_seql_drops_rare_negatives_with_probability_gamma() -> None:
    counts = [1000, 1]  # class 1 is rare (prior < 0.005)
    z = torch.zeros(20000, 2)
    y = torch.zeros(20000, dtype=torch.long)
    torch.manual_seed(0)
    loss = build_loss("seql", counts, gamma=0.3)
    # a dropped rare negative leaves log(1) = 0, a kept one log(2): mean = 0.7 * log 2
    assert loss(z, y).item() == pytest.approx(0.7 * math.log(2), rel=0.03)


@pytest.mark.parametrize("name", list_losses())
def test_losses_compute_in_float32_under_autocast(name: str) -> None:
    z, y = _inputs(10)
    loss_fn = build_loss(name, COUNTS[10])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_fn(z.bfloat16(), y)
    assert got.dtype == torch.float32


def _cao_drw_weights(counts: list[int], beta: float = 0.9999) -> torch.Tensor:
    """Cao et al.'s DRW weights as their code builds them (LDAM-DRW, cifar_train.py)."""
    import numpy as np

    effective_num = 1.0 - np.power(beta, counts)
    weights = (1.0 - beta) / np.array(effective_num)
    weights = weights / np.sum(weights) * len(counts)
    return torch.tensor(weights, dtype=torch.float32)


def test_drw_switches_class_balanced_weights_on_after_drw_epoch_as_cao_et_al_code() -> None:
    """Issue 37: DRW divides by the batch's sum of weights, as nn.CrossEntropyLoss(weight=…)
    in Cao et al.'s code, not by the batch size (about 5x smaller on a long-tailed batch)."""
    z, y = _inputs(10)
    counts = COUNTS[10]
    loss = build_loss("ce", counts, drw_epoch=3)
    loss.set_epoch(3)
    assert loss(z, y).item() == pytest.approx(reference("ce", z, y, counts), rel=1e-6)
    loss.set_epoch(4)
    cao = torch.nn.functional.cross_entropy(z, y, weight=_cao_drw_weights(counts))
    assert loss(z, y).item() == pytest.approx(cao.item(), rel=1e-5)
    ldam = build_loss("ldam", counts, drw_epoch=0)
    ldam.set_epoch(1)
    margins = 0.5 / torch.tensor(counts, dtype=torch.float64) ** 0.25
    margins = (margins * (0.5 / margins.max())).float()  # max margin 0.5, Cao et al.'s code
    shifted = z - torch.nn.functional.one_hot(y, len(counts)) * margins[y][:, None]
    cao_ldam = torch.nn.functional.cross_entropy(30 * shifted, y, weight=_cao_drw_weights(counts))
    assert ldam(z, y).item() == pytest.approx(cao_ldam.item(), rel=1e-5)


def test_drw_reduction_batch_keeps_the_earlier_form() -> None:
    z, y = _inputs(10)
    counts = COUNTS[10]
    loss = build_loss("ce", counts, drw_epoch=0, drw_reduction="batch")
    loss.set_epoch(1)
    assert loss(z, y).item() == pytest.approx(reference("cb", z, y, counts, beta=0.9999), rel=1e-5)
    with pytest.raises(ConfigError, match="drw_reduction must be one of weights, batch"):
        build_loss("ce", counts, drw_epoch=0, drw_reduction="sum")


def test_drw_defers_a_weighted_loss_own_weights() -> None:
    z, y = _inputs(10)
    loss = build_loss("wce", COUNTS[10], drw_epoch=1)
    loss.set_epoch(1)
    assert loss(z, y).item() == pytest.approx(reference("ce", z, y, COUNTS[10]), rel=1e-6)
    loss.set_epoch(2)
    own = loss.class_weights
    expected = torch.nn.functional.cross_entropy(z, y, weight=own)
    assert loss(z, y).item() == pytest.approx(expected.item(), rel=1e-5)


def test_drw_under_mixing_averages_by_the_mixed_weights() -> None:
    z, y = _inputs(10)
    y_b = y.flip(0)
    lam = torch.full((len(y),), 0.3)
    loss = build_loss("ce", COUNTS[10], drw_epoch=0)
    loss.set_epoch(1)
    w = loss.class_weights
    per = torch.nn.functional.cross_entropy(z, y, reduction="none")
    per_b = torch.nn.functional.cross_entropy(z, y_b, reduction="none")
    top = (lam * w[y] * per + (1 - lam) * w[y_b] * per_b).sum()
    expected = top / (lam * w[y] + (1 - lam) * w[y_b]).sum()
    assert loss.mixed(z, y, y_b, lam).item() == pytest.approx(expected.item(), rel=1e-5)
    same = loss.mixed(z, y, y, torch.ones(len(y)))
    assert same.item() == pytest.approx(loss(z, y).item(), rel=1e-6)


def test_post_hoc_logit_adjustment() -> None:
    z = torch.zeros(3, 4)
    counts = [70, 20, 9, 1]
    out = adjust_logits(z, counts, tau=1.0)
    assert torch.allclose(out[0], -torch.log(torch.tensor(counts) / 100.0))
    assert out.argmax(1).tolist() == [3, 3, 3]  # the rarest class wins ties after adjustment


def test_registry_has_display_names_and_documented_defaults() -> None:
    for spec in LOSSES.values():
        assert spec.display_name and spec.paper
        for hp in spec.hparams:
            assert hp.help
        # the builder takes its documented defaults and builds the loss for these counts
        built = spec.builder([10, 5, 1], **{hp.name: hp.default for hp in spec.hparams})
        assert isinstance(built, ClassAwareLoss) and built.num_classes == 3
    assert {hp.name: hp.default for hp in LOSSES["ldam"].hparams} == {
        "max_margin": 0.5,
        "scale": 30.0,
    }
    assert {hp.name: hp.default for hp in LOSSES["cb"].hparams} == {"beta": 0.9999}


# --- bad input -----------------------------------------------------------------------------------


def test_unknown_loss_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown loss 'foca'.*did you mean 'focal'.*ldam"):
        build_loss("foca", [10, 5])


def test_unknown_hyper_parameter_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"no hyper-parameter 'gama'.*gamma"):
        build_loss("focal", [10, 5], gama=2.0)


@pytest.mark.parametrize("counts", [[10, 0, 3], [10, -1], [1.5, 3], []])
def test_bad_class_counts(counts: list) -> None:
    with pytest.raises(ConfigError, match="class_counts"):
        build_loss("ce", counts)


def test_mismatched_number_of_classes() -> None:
    with pytest.raises(ValueError, match=r"logits must be \[B, 3\]"):
        build_loss("ce", [5, 4, 3])(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def test_non_integer_targets() -> None:
    with pytest.raises(ValueError, match="integer class indices"):
        build_loss("ce", [5, 4])(torch.zeros(2, 2), torch.zeros(2))


def test_targets_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"targets must be in \[0, 1\]"):
        build_loss("bs", [5, 4])(torch.zeros(2, 2), torch.tensor([0, 2]))


def test_which_losses_are_cross_entropy_on_a_balanced_set_follows_from_their_formulas() -> None:
    """Uniform class weights (WCE, CB), a constant logit shift (BS, LA) and no rare class
    (SEQL with its threshold 0.005 below 1/100) make CE; focusing (focal) and margins (LDAM)
    do not; on long-tailed counts none does; SEQL on 1,000 balanced classes (1/1000 < 0.005:
    every class rare) does not either."""
    from ltexp.losses import same_as_cross_entropy

    balanced, long_tailed = [450] * 100, [500 // (i + 1) + 1 for i in range(100)]
    expected = {"ce", "wce", "cb", "bs", "la", "seql"}
    assert {n for n in LOSSES if same_as_cross_entropy(n, balanced)} == expected
    assert {n for n in LOSSES if same_as_cross_entropy(n, long_tailed)} == {"ce"}
    assert not same_as_cross_entropy("seql", [10] * 1000)
    assert same_as_cross_entropy("seql", [10] * 1000, threshold=0.0005)
    assert same_as_cross_entropy("wce", balanced, drw_epoch=1)


def test_the_thesis_s_unnormalised_class_balanced_weights() -> None:
    """Issue 25: the thesis's CB weights are (1 − β)/(1 − β^n) as the formula gives them; on
    balanced training they scale CE by (1 − β)/(1 − β^450) ≈ 0.0023, where ltexp's mean-1 CB is
    CE itself."""
    counts = [450] * 10
    scale = (1 - 0.9999) / (1 - 0.9999**450)  # computed here, from the formula
    torch.manual_seed(0)
    logits, target = torch.randn(32, 10), torch.randint(0, 10, (32,))
    ce = build_loss("ce", counts)(logits, target)
    raw = build_loss("cb_raw", counts)(logits, target)
    assert raw.item() == pytest.approx(scale * ce.item(), rel=1e-5)
    assert build_loss("cb", counts)(logits, target).item() == pytest.approx(ce.item(), rel=1e-6)
    long_tailed = [450, 100, 20, 4]
    weights = [(1 - 0.9999) / (1 - 0.9999**n) for n in long_tailed]
    raw_lt = build_loss("cb_raw", long_tailed)
    per_class = [raw_lt(torch.zeros(1, 4), torch.tensor([k])).item() for k in range(4)]
    assert per_class == pytest.approx([w * math.log(4) for w in weights], rel=1e-5)
