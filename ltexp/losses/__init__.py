"""Class-sensitive losses for long-tailed classification, behind one registry.

``build_loss(name, class_counts, **hparams)`` returns an ``nn.Module`` whose
``forward(logits[B, K], target[B])`` is the mean loss over the batch. ``LOSSES`` maps every name
to its :class:`LossSpec` (builder, display name, documented hyper-parameters). Adding a loss is one
module in this package with a ``@register_loss`` builder: every module here is imported.
"""

from ltexp.discover import import_submodules
from ltexp.losses.base import ClassAwareLoss, class_balanced_weights, validate_class_counts
from ltexp.losses.registry import (
    LOSSES,
    HParam,
    LossSpec,
    build_loss,
    list_losses,
    register_loss,
    same_as_cross_entropy,
    same_as_loss,
)

# Registration happens on import: every module of this package.
import_submodules(__name__, __path__, skip=("base", "registry"))
from ltexp.losses.logit_adjusted import adjust_logits  # noqa: E402  isort: skip

__all__ = [
    "LOSSES",
    "ClassAwareLoss",
    "HParam",
    "LossSpec",
    "adjust_logits",
    "build_loss",
    "class_balanced_weights",
    "list_losses",
    "register_loss",
    "same_as_cross_entropy",
    "same_as_loss",
    "validate_class_counts",
]
