"""What every ltexp loss shares: class counts, input checks, float32 numerics, class weights, DRW.

A loss subclass implements :meth:`ClassAwareLoss.per_sample` (one value per sample, float32
logits in); the base class checks inputs, disables autocast, multiplies by the active class
weights and averages over the batch. A loss's own weights (WCE, CB) average as ``Σ_i w_{y_i} ℓ_i
/ B``: dividing by ``B`` rather than by ``Σ w`` keeps the weights' effect on the loss scale, as
in the class-balanced loss of Cui et al. (2019). Weights deferred by DRW average as Cao et al.'s
code does, ``Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}`` (``F.cross_entropy(weight=...)``): on CIFAR-100-LT
a batch's mean weight is about 0.2, so ``/ B`` gave a loss 5× smaller than theirs, and under SGD
steps 5× smaller; ``drw_reduction="batch"`` keeps that earlier form.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ltexp.errors import ConfigError

# how DRW's deferred weights average over a batch (ClassAwareLoss, drw_reduction)
DRW_REDUCTIONS = ("weights", "batch")


def validate_class_counts(class_counts: Sequence[int] | Tensor) -> Tensor:
    """Return ``class_counts`` as a float64 tensor, refusing empty, non-integer or non-positive."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten().cpu()
    if counts.numel() < 2:
        raise ConfigError(f"class_counts needs at least 2 classes, got {counts.numel()}")
    if not torch.isfinite(counts).all() or (counts != counts.round()).any():
        raise ConfigError("class_counts must be whole numbers of images per class")
    bad = torch.nonzero(counts <= 0).flatten().tolist()
    if bad:
        raise ConfigError(
            f"class_counts must be > 0 for every class; classes {bad[:10]} have "
            f"{[int(counts[i]) for i in bad[:10]]} (drop empty classes first)"
        )
    return counts


def normalise_weights(weights: Tensor) -> Tensor:
    """Scale class weights so that their mean over classes is 1 (Cui et al. 2019)."""
    return weights * (weights.numel() / weights.sum())


def class_balanced_weights(class_counts: Tensor, beta: float, normalise: bool = True) -> Tensor:
    """Class-balanced weights ``(1 - β) / (1 - β^n_k)`` (Cui et al. 2019), mean 1 over classes
    (their code), or as the formula gives them (``normalise=False``: the thesis's, far below 1,
    which scales the whole loss down).

    ``β = 0`` gives equal weights; ``β → 1`` tends to inverse frequency.
    """
    counts = class_counts.to(torch.float64)
    if beta == 0.0:
        return torch.ones_like(counts)
    effective_num = -torch.expm1(counts * torch.log(torch.tensor(beta, dtype=torch.float64)))
    weights = (1.0 - beta) / effective_num
    return normalise_weights(weights) if normalise else weights


class ClassAwareLoss(nn.Module):
    """Base class: a loss that knows the training set's class counts.

    Args:
        class_counts: images per class of the training split, indexed by label.
        class_weights: per-class weights of the loss itself (normalised to mean 1), or None.
        drw_epoch: deferred re-weighting (Cao et al. 2019): class weights are off for the first
            ``drw_epoch`` epochs and on afterwards. The weights deferred are the loss's own, or
            class-balanced weights with ``drw_beta`` for a loss that has none. None: no DRW.
        drw_beta: β of the deferred class-balanced weights (Cao et al. 2019: 0.9999).
        drw_reduction: how the deferred weights average over a batch: ``"weights"``, by the sum
            of the batch's weights (Cao et al.'s code), or ``"batch"``, by the batch size.
        label_smoothing: ε of label smoothing (Szegedy et al. 2016), for a loss that
            :attr:`smoothable` says takes it (the softmax cross-entropy family).
    """

    smoothable = False  # the loss's target is a softmax's, which label smoothing changes

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        class_weights: Tensor | None = None,
        drw_epoch: int | None = None,
        drw_beta: float = 0.9999,
        label_smoothing: float = 0.0,
        drw_reduction: str = "weights",
    ) -> None:
        super().__init__()
        counts = validate_class_counts(class_counts)
        if label_smoothing and not self.smoothable:
            raise ConfigError(
                f"label_smoothing={label_smoothing:g} applies to the softmax cross-entropy "
                f"losses (ce, wce, cb, cb_raw); {type(self).__name__} has its own form of the "
                f"target: use label_smoothing=0"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        if drw_epoch is not None and drw_epoch < 0:
            raise ConfigError(f"drw_epoch must be >= 0, got {drw_epoch}")
        if not 0.0 <= drw_beta < 1.0:
            raise ConfigError(f"drw_beta must be in [0, 1), got {drw_beta}")
        if drw_reduction not in DRW_REDUCTIONS:
            raise ConfigError(
                f"drw_reduction must be one of {', '.join(DRW_REDUCTIONS)}, got {drw_reduction!r}"
            )
        self.drw_reduction = drw_reduction
        self.num_classes = int(counts.numel())
        self.register_buffer("class_counts", counts.float())
        self.register_buffer("log_prior", torch.log(counts / counts.sum()).float())
        if drw_epoch is not None and class_weights is None:
            class_weights = class_balanced_weights(counts, drw_beta)
        self.register_buffer(
            "class_weights", None if class_weights is None else class_weights.float()
        )
        self.drw_epoch = drw_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the (1-based) epoch about to run; DRW switches weights on with it."""
        self.epoch = epoch

    def active_class_weights(self) -> Tensor | None:
        """The class weights in force this epoch (None = every class counts 1)."""
        if self.class_weights is None:
            return None
        if self.drw_epoch is not None and self.epoch <= self.drw_epoch:
            return None
        return self.class_weights

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        """Unweighted loss of each sample, ``[B]``, from float32 ``logits[B, K]``."""
        raise NotImplementedError

    def check_inputs(self, logits: Tensor, target: Tensor) -> None:
        """Refuse shapes, dtypes and (on CPU, where it costs no device sync) label values."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must be [B, {self.num_classes}] (the loss was built for "
                f"{self.num_classes} classes), got {list(logits.shape)}"
            )
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise ValueError(f"targets must be integer class indices, got dtype {target.dtype}")
        if target.shape != logits.shape[:1]:
            raise ValueError(f"targets must be [B] = [{logits.shape[0]}], got {list(target.shape)}")
        if target.device.type == "cpu" and target.numel():
            low, high = int(target.min()), int(target.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(
                    f"targets must be in [0, {self.num_classes - 1}], got values in [{low}, {high}]"
                )

    def sample_losses(self, logits: Tensor, target: Tensor) -> Tensor:
        """``w_{y_i} · ℓ_i`` of each sample, ``[B]``, in float32 even under autocast."""
        self.check_inputs(logits, target)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            target = target.long()
            losses = self.per_sample(logits.float(), target)
            weights = self.active_class_weights()
            if weights is not None:
                losses = losses * weights[target]
            return losses

    def _by_weights(self) -> bool:
        """The batch averages by the sum of its weights: DRW's deferred weights are on and
        ``drw_reduction`` is ``"weights"``."""
        return (
            self.drw_epoch is not None
            and self.drw_reduction == "weights"
            and self.active_class_weights() is not None
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``Σ w_{y_i} ℓ_i / B`` (or ``/ Σ w_{y_i}`` under DRW, see the module docstring), in
        float32 even under autocast."""
        losses = self.sample_losses(logits, target)
        if self._by_weights():
            return losses.sum() / self.active_class_weights()[target.long()].float().sum()
        return losses.mean()

    def mixed(self, logits: Tensor, y_a: Tensor, y_b: Tensor, weight_a: Tensor) -> Tensor:
        """The loss of a mixed batch: the average of ``v_i·ℓ(y_a,i) + (1 − v_i)·ℓ(y_b,i)``
        (:mod:`ltexp.data.mixing`), by the batch size or, under DRW, by the mixed weights."""
        a, b = self.sample_losses(logits, y_a), self.sample_losses(logits, y_b)
        total = (weight_a * a + (1.0 - weight_a) * b).sum()
        if self._by_weights():
            w = self.active_class_weights()
            mixed_w = weight_a * w[y_a.long()] + (1.0 - weight_a) * w[y_b.long()]
            return total / mixed_w.float().sum()
        return total / a.numel()
