"""Decoupling (Kang et al. 2020) as library functions: τ-normalisation's two ends, cRT's frozen
backbone, LWS's folding, the τ search's tie rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ltexp.data.pipeline import TensorBatches
from ltexp.errors import ConfigError
from ltexp.losses import build_loss
from ltexp.models import build_model, model_spec
from ltexp.training import fit, make_scheduler
from ltexp.training.decoupling import (
    FrozenBackbone,
    apply_tau,
    backbone_state,
    best_tau,
    head_inputs,
    linear_head,
    plain_state,
    prepare_stage2,
    tau_normalised,
    tau_scores,
)


def _model(seed: int = 0, head: str = "linear") -> tuple[nn.Module, str]:
    torch.manual_seed(seed)
    return build_model("tiny_cnn", 4, pretrained=False, head=head), model_spec(
        "tiny_cnn"
    ).classifier


def _batches(n: int = 48, train: bool = True) -> TensorBatches:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 16, 16, 3), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0] * (n // 2) + [1] * (n // 4) + [2] * (n // 8) + [3] * (n // 8))
    return TensorBatches(images, labels, 8, train=train, seed=3, sampler="class_balanced", epochs=2)


def test_tau_zero_is_the_identity_and_tau_one_gives_unit_rows() -> None:
    w = torch.randn(5, 7) * torch.arange(1, 6).float()[:, None]
    assert torch.equal(tau_normalised(w, 0.0), w)
    assert torch.allclose(tau_normalised(w, 1.0).norm(dim=1), torch.ones(5))
    # in between, the row norms are ‖w‖^(1-τ)
    assert torch.allclose(tau_normalised(w, 0.5).norm(dim=1), w.norm(dim=1).sqrt())


def test_apply_tau_rescales_the_head_in_place_and_drops_the_bias_as_kang_et_al() -> None:
    model, path = _model()
    head = linear_head(model, path)
    before, bias = head.weight.detach().clone(), head.bias.detach().clone()
    apply_tau(head, 0.0, keep_bias=True)
    assert torch.equal(head.weight, before) and torch.equal(head.bias, bias)
    apply_tau(head, 1.0, keep_bias=True)  # ltexp's earlier form
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(4))
    assert torch.equal(head.bias, bias)
    apply_tau(head, 1.0)  # the paper's: scores w_k·x / ‖w_k‖^τ, no bias
    assert torch.equal(head.bias, torch.zeros(4))


def test_tau_is_searched_over_0_to_2_without_the_bias_by_default() -> None:
    """Issue 25: Kang et al.'s code searches τ over 0-2 and drops the bias."""
    from ltexp.training.decoupling import TAU_GRIDS

    assert TAU_GRIDS["kang"] == tuple(round(0.1 * i, 1) for i in range(21))
    assert TAU_GRIDS["keep_bias"][-1] == 1.0
    torch.manual_seed(0)
    features, head = torch.randn(50, 6), torch.nn.Linear(6, 3)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([5.0, -5.0, 0.0]))  # a bias that would decide every score
    labels = torch.randint(0, 3, (50,))
    scores = tau_scores(features, labels, head, (0.0,))
    # independently: argmax of x·W^T, the bias left out
    expected = ((features @ head.weight.T).argmax(1) == labels).float().mean().item()
    assert scores[0.0] == pytest.approx(expected)
    with_bias = tau_scores(features, labels, head, (0.0,), keep_bias=True)
    assert with_bias[0.0] == pytest.approx((labels == 0).float().mean().item())


def test_crt_trains_only_a_fresh_classifier_and_leaves_the_backbone_bit_identical() -> None:
    model, path = _model()
    frozen = {k: v.clone() for k, v in backbone_state(model, path)}
    assert any("running_mean" in k for k in frozen)  # batch norm buffers are checked too
    old_head = linear_head(model, path).weight.detach().clone()
    trainable = prepare_stage2(model, path, "crt", seed=5)
    assert [p.shape for p in trainable] == [torch.Size([4, model.fc.in_features]), (4,)]
    assert not torch.equal(linear_head(model, path).weight, old_head)  # re-initialised
    reset = linear_head(model, path).weight.detach().clone()
    batches = _batches()
    optimizer = torch.optim.SGD(trainable, lr=0.5, momentum=0.9)
    for _ in fit(
        FrozenBackbone(model),
        build_loss("ce", [24, 12, 6, 6]),
        batches,
        _batches(train=False),
        optimizer,
        make_scheduler("cosine", optimizer, epochs=2, step_size=1, gamma=1.0),
        epochs=2,
        groups={},
        progress=False,
    ):
        pass
    after = dict(backbone_state(model, path))
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    assert not torch.equal(linear_head(model, path).weight, reset)  # the head did learn


def test_lws_learns_scales_only_and_folds_into_a_plain_head() -> None:
    model, path = _model()
    head_before = linear_head(model, path).weight.detach().clone()
    (scales,) = prepare_stage2(model, path, "lws", seed=0)
    with torch.no_grad():
        scales.copy_(torch.tensor([0.5, 1.0, 2.0, 3.0]))
    x = torch.randn(6, 3, 16, 16)
    model.eval()
    scaled_logits = model(x)
    plain, _ = _model(seed=1)  # other weights: the state must bring all of them
    plain.load_state_dict(plain_state(model, path))
    plain.eval()
    assert torch.allclose(plain(x), scaled_logits, atol=1e-5)
    assert torch.equal(model.get_submodule(path).head.weight, head_before)  # not trained


def test_best_tau_prefers_the_smaller_tau_on_a_tie() -> None:
    assert best_tau({0.0: 0.5, 0.3: 0.7, 0.6: 0.7, 1.0: 0.6}) == 0.3


def test_tau_scores_come_from_the_head_inputs_and_the_head_is_put_back() -> None:
    model, path = _model()
    model.eval()
    head = linear_head(model, path)
    batches = _batches(train=False)
    features = head_inputs(model, path, lambda m: m(batches.images.float() / 255))
    assert model.get_submodule(path) is head
    assert features.shape == (len(batches.labels), head.in_features)
    scores = tau_scores(features, batches.labels, head, (0.0,), keep_bias=True)
    logits = model(batches.images.float() / 255)
    assert scores[0.0] == pytest.approx((logits.argmax(1) == batches.labels).float().mean().item())


def test_decoupling_refuses_a_cosine_head() -> None:
    model, path = _model(head="cosine")
    with pytest.raises(ConfigError, match="needs the linear head"):
        linear_head(model, path)
