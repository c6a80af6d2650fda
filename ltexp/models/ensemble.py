"""An ensemble of trained classifiers as one module: the mean of its members' logits (default)
or of their probabilities.

Why the logits by default: the output stays what every ltexp model answers, so evaluation,
post-hoc logit adjustment (τ), temperature scaling and serving treat an ensemble like any model;
the mean of the logits is the renormalised geometric mean of the members' softmax distributions.
Its weakness: members whose logits live on different scales (LDAM's scaled cosines beside a
softmax model's) weigh unequally. ``combine=probs`` averages the probabilities instead and
answers their log (its softmax is the mean probability, its argmax the same class).

Members may have been trained with different input normalisations (``normalize``): the
ensemble takes inputs normalised as its first member's and re-normalises them for each other
member (``x·scale_i + shift_i``, exact: 1 and 0 for a member with the same statistics).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

ENSEMBLE = "ensemble"  # the ``model`` of an ensemble's ltexp_model.json
COMBINES = ("logits", "probs")


class Ensemble(nn.Module):
    """The mean of ``members``' logits (``combine="logits"``) or the log of the mean of their
    probabilities (``combine="probs"``); TorchScript-able, so it registers like any model."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        combine: str = "logits",
        stats: Sequence[tuple[Sequence[float], Sequence[float]]] | None = None,
    ) -> None:
        """
        Args:
            members: the classifiers, each answering ``[N, K]`` logits.
            combine: ``logits`` or ``probs``.
            stats: each member's input ``(mean, std)``; the ensemble takes the first's.
        """
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        self.probabilities = combine == "probs"
        scale, shift = input_adapters(stats or [((0.0,) * 3, (1.0,) * 3)] * len(members))
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    @property
    def combine(self) -> str:
        return "probs" if self.probabilities else "logits"

    def forward(self, x: Tensor) -> Tensor:
        outs: list[Tensor] = []
        for i, member in enumerate(self.members):
            z = member(x * self.scale[i] + self.shift[i]).float()
            outs.append(z.softmax(1) if self.probabilities else z)
        mean = torch.stack(outs).mean(0)
        return mean.log() if self.probabilities else mean


def input_adapters(
    stats: Sequence[tuple[Sequence[float], Sequence[float]]],
) -> tuple[Tensor, Tensor]:
    """``scale[i], shift[i]`` (each ``[1, 3, 1, 1]``) that turn an input normalised with the
    first member's ``(mean, std)`` into one normalised with member ``i``'s:
    ``(x·s₀ + m₀ − mᵢ)/sᵢ``."""
    m0, s0 = torch.tensor(stats[0][0]), torch.tensor(stats[0][1])
    scales, shifts = [], []
    for mean, std in stats:
        m, s = torch.tensor(mean), torch.tensor(std)
        same = torch.equal(m, m0) and torch.equal(s, s0)
        scales.append(torch.ones(3) if same else s0 / s)
        shifts.append(torch.zeros(3) if same else (m0 - m) / s)
    view = (len(stats), 1, 3, 1, 1)
    return torch.stack(scales).view(view), torch.stack(shifts).view(view)
