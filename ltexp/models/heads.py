"""Classifier heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CosineClassifier(nn.Module):
    """Cosine (normalised) classifier: ``logits_k = <x/|x|, w_k/|w_k|>`` ∈ [−1, 1].

    The head LDAM is paired with (``NormedLinear`` in Cao et al. 2019): the loss's scale ``s``
    turns cosines into logits, and margins are comparable across classes because every class
    vector has norm 1. No bias.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        # Cao et al.'s init: uniform, each class vector rescaled to unit norm.
        nn.init.uniform_(self.weight, -1.0, 1.0)
        with torch.no_grad():
            self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


def make_head(kind: str, in_features: int, num_classes: int) -> nn.Module:
    """A fresh ``linear`` or ``cosine`` head."""
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "cosine":
        return CosineClassifier(in_features, num_classes)
    raise ValueError(f"unknown head {kind!r}; valid: linear, cosine")
