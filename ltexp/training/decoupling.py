"""Two-stage decoupling: the representation of a trained model kept, its classifier re-balanced.

Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition", ICLR 2020:
after ordinary (instance-balanced) training, only the classifier is adjusted:

- **cRT** (classifier re-training): the classifier is re-initialised and trained again with
  class-balanced sampling while the backbone stays frozen (its weights are left bit-identical).
- **τ-normalisation**: each class's weight vector is rescaled, ``w_k ← w_k / ‖w_k‖^τ``, and the
  scores drop the classifier's bias, as Kang et al. define it and their code does; τ = 0 leaves
  the rows as they are, τ = 1 gives unit-norm rows; τ is chosen on the validation set from
  0, 0.1, …, 2 (their code's search). ``stage2_tau_form=keep_bias`` is ltexp's earlier form: the
  bias kept, τ from 0, 0.1, …, 1.
- **LWS** (learnable weight scaling): ``logit_k = f_k · (w_k·x + b_k)`` with one learned scale per
  class (initialised to 1), trained with class-balanced sampling, backbone and classifier frozen.

Each result is again a plain backbone with a linear head (τ and the scales are folded into the
head's weights), so it registers, loads and serves like any ltexp model. Methods need the linear
head: a cosine classifier normalises its rows away.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ltexp.config.fields import STAGE2_METHODS
from ltexp.errors import ConfigError, unknown_name_error
from ltexp.losses import build_loss
from ltexp.training.loop import fit, predict
from ltexp.training.setup import make_scheduler, optimizer_for

if TYPE_CHECKING:
    from ltexp.config import Config
    from ltexp.data.pipeline import TensorBatches
    from ltexp.training.loop import EpochResult

METHODS = STAGE2_METHODS  # declared with the stage2 option
# the τ searched on validation, per form: Kang et al.'s (bias dropped), ltexp's earlier one
TAU_GRIDS = {
    "kang": tuple(round(0.1 * i, 1) for i in range(21)),
    "keep_bias": tuple(round(0.1 * i, 1) for i in range(11)),
}
TAU_GRID = TAU_GRIDS["kang"]


def linear_head(model: nn.Module, path: str) -> nn.Linear:
    """The model's classifier at ``path``, which decoupling needs to be linear."""
    head = model.get_submodule(path)
    if not isinstance(head, nn.Linear):
        raise ConfigError(
            f"decoupling needs the linear head; this model's classifier is "
            f"{type(head).__name__} (head=cosine normalises the rows that decoupling rescales)"
        )
    return head


def tau_normalised(weight: Tensor, tau: float) -> Tensor:
    """``w_k / ‖w_k‖^τ`` for each row ``w_k`` (τ = 0: unchanged, τ = 1: unit norm)."""
    norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return weight / norms.pow(tau)


def freeze_all_but(model: nn.Module, path: str) -> list[nn.Parameter]:
    """Freeze every parameter outside the submodule ``path``; return that submodule's."""
    trainable = set(id(p) for p in model.get_submodule(path).parameters())
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    return [p for p in model.parameters() if p.requires_grad]


def reset_classifier(head: nn.Linear, seed: int) -> None:
    """cRT's fresh start: the head re-initialised from ``seed`` (PyTorch's default init)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    head.reset_parameters()
    torch.random.set_rng_state(state)


class ScaledHead(nn.Module):
    """LWS: a frozen linear head whose logits are scaled by a learned ``f_k`` per class."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head
        for p in head.parameters():
            p.requires_grad_(False)
        self.scales = nn.Parameter(torch.ones(head.out_features, device=head.weight.device))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x) * self.scales


def check_method(method: str) -> str:
    """A known decoupling method."""
    if method not in METHODS:
        raise unknown_name_error("stage2 method", method, METHODS)
    return method


def swap(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` in ``model``."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def backbone_state(model: nn.Module, path: str) -> Iterator[tuple[str, Tensor]]:
    """Every tensor of the model outside the classifier (what cRT and LWS must not change)."""
    prefix = path + "."
    for name, value in model.state_dict().items():
        if not name.startswith(prefix):
            yield name, value


class FrozenBackbone(nn.Module):
    """A model whose every layer but the trainable head stays in eval mode while training: batch
    norm statistics and dropout are those of stage 1, so the backbone computes exactly what it
    did (and its buffers stay bit-identical)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> FrozenBackbone:
        self.training = mode
        self.model.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def prepare_stage2(model: nn.Module, path: str, method: str, seed: int) -> list[nn.Parameter]:
    """Set ``model`` up for cRT or LWS; return the parameters stage 2 trains.

    cRT: the head re-initialised from ``seed``, only it trainable. LWS: the head wrapped in a
    :class:`ScaledHead`, only the scales trainable.
    """
    head = linear_head(model, path)
    if method == "crt":
        reset_classifier(head, seed)
        return freeze_all_but(model, path)
    if method == "lws":
        for p in model.parameters():
            p.requires_grad_(False)
        scaled = ScaledHead(head)
        swap(model, path, scaled)
        return [scaled.scales]
    raise ValueError(f"{method} trains no parameters")  # pragma: no cover


def plain_state(model: nn.Module, path: str) -> dict[str, Tensor]:
    """The state dict of ``model`` as the plain linear-head model it stands for (LWS's scales
    folded into the head), detached copies: what a checkpoint stores and the registry loads."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    head = model.get_submodule(path)
    if isinstance(head, ScaledHead):
        scales = state.pop(f"{path}.scales")
        for name in ("weight", "bias"):
            value = state.pop(f"{path}.head.{name}", None)
            if value is not None:
                state[f"{path}.{name}"] = value * (scales[:, None] if name == "weight" else scales)
    return state


@torch.inference_mode()
def head_inputs(model: nn.Module, path: str, predict: Callable[[nn.Module], Tensor]) -> Tensor:
    """What the head sees for a split (``predict(model)`` with the head replaced by identity)."""
    head = model.get_submodule(path)
    swap(model, path, nn.Identity())
    try:
        return predict(model).float()
    finally:
        swap(model, path, head)


def tau_scores(
    features: Tensor,
    labels: Tensor,
    head: nn.Linear,
    taus: tuple[float, ...] = TAU_GRID,
    keep_bias: bool = False,
) -> dict[float, float]:
    """Top-1 accuracy of the τ-normalised head for each τ, from the head's inputs."""
    weight = head.weight.detach().float()
    bias = None if head.bias is None or not keep_bias else head.bias.detach().float()
    out = {}
    for tau in taus:
        logits = nn.functional.linear(features, tau_normalised(weight, tau), bias)
        out[tau] = (logits.argmax(1) == labels).float().mean().item()
    return out


def best_tau(scores: dict[float, float]) -> float:
    """The τ with the best score; on a tie the smaller τ (the smaller change to the model)."""
    return min(scores, key=lambda tau: (-scores[tau], tau))


def apply_tau(head: nn.Linear, tau: float, keep_bias: bool = False) -> None:
    """Rescale the head's rows in place, ``w_k ← w_k / ‖w_k‖^τ``, and zero its bias unless
    ``keep_bias`` (the model then scores as :func:`tau_scores` did)."""
    with torch.no_grad():
        head.weight.copy_(tau_normalised(head.weight.float(), tau).to(head.weight.dtype))
        if head.bias is not None and not keep_bias:
            head.bias.zero_()


def search_tau(
    model: nn.Module,
    path: str,
    val_batches: TensorBatches,
    amp: torch.dtype | None,
    given: float | None = None,
    form: str = "kang",
) -> tuple[float, dict[float, float]]:
    """τ-normalise the head in place with ``given``, or with the τ of the form's grid
    (:data:`TAU_GRIDS`) that scores best on the validation set; return τ and the validation
    top-1 of each τ tried."""
    features = head_inputs(model, path, lambda m: predict(m, val_batches, amp))
    head = linear_head(model, path)
    keep_bias = form == "keep_bias"
    taus = (given,) if given is not None else TAU_GRIDS[form]
    scores = tau_scores(features, val_batches.labels, head, taus, keep_bias)
    tau = best_tau(scores)
    apply_tau(head, tau, keep_bias)
    return tau, scores


def train_classifier(
    model: nn.Module,
    path: str,
    method: str,
    train_batches: TensorBatches,
    val_batches: TensorBatches,
    *,
    stage1: Config,
    lr: float,
    epochs: int,
    class_counts: Sequence[int],
    groups: dict[str, list[int]],
    amp: torch.dtype | None,
    device: torch.device,
) -> Iterator[EpochResult]:
    """cRT or LWS: the head (cRT, re-initialised) or its scales (LWS) trained with plain
    cross-entropy on ``train_batches`` (sampled class-balanced), the backbone frozen in eval
    mode; ``stage1``'s optimizer and seed, ``lr`` cosine-annealed over ``epochs``. Yields each
    epoch's result, as :func:`ltexp.training.loop.fit` does."""
    trainable = prepare_stage2(model, path, method, stage1.train.seed)
    optimizer = optimizer_for(stage1, iter(trainable), device, lr=lr)
    scheduler = make_scheduler("cosine", optimizer, epochs=epochs, step_size=1, gamma=1.0)
    loss_fn = build_loss("ce", list(class_counts)).to(device)
    yield from fit(
        FrozenBackbone(model),
        loss_fn,
        train_batches,
        val_batches,
        optimizer,
        scheduler,
        epochs=epochs,
        groups=groups,
        amp=amp,
    )
