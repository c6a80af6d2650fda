"""The loss registry: names → builders, display names and documented hyper-parameters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ltexp.errors import ConfigError, did_you_mean, unknown_name_error


@dataclass(frozen=True)
class HParam:
    """A documented hyper-parameter of a loss: keyword name, paper default, allowed range."""

    name: str
    default: float
    help: str
    low: float | None = None
    low_open: bool = False
    high: float | None = None


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: how to build it and how to present it."""

    name: str
    display_name: str
    builder: Callable[..., nn.Module]
    hparams: tuple[HParam, ...]
    paper: str


LOSSES: dict[str, LossSpec] = {}

# Keywords every loss accepts, handled by the base class: deferred re-weighting (Cao et al.
# 2019) and label smoothing (refused by a loss whose target is not a softmax's).
COMMON_HPARAMS = ("drw_epoch", "drw_beta", "drw_reduction", "label_smoothing")


def register_loss(
    name: str, display_name: str, *, hparams: Sequence[HParam] = (), paper: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(class_counts, **hparams) -> nn.Module`` as ``name``."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        LOSSES[name] = LossSpec(name, display_name, builder, tuple(hparams), paper)
        return builder

    return decorate


def list_losses() -> list[str]:
    """Registered loss names."""
    return list(LOSSES)


def build_loss(
    name: str, class_counts: Sequence[int] | torch.Tensor, **hparams: float
) -> nn.Module:
    """Build the loss ``name`` for a training set with ``class_counts`` images per class.

    Args:
        name: a registered loss (see :func:`list_losses`).
        class_counts: images per class of the training split, indexed by label; all > 0.
        **hparams: the loss's hyper-parameters (defaults from its paper), plus ``drw_epoch`` /
            ``drw_beta`` / ``drw_reduction`` for deferred re-weighting.

    Raises:
        ConfigError: unknown name or hyper-parameter (the valid ones are listed).
    """
    spec = LOSSES.get(name)
    if spec is None:
        raise unknown_name_error("loss", name, list(LOSSES))
    valid = [hp.name for hp in spec.hparams] + list(COMMON_HPARAMS)
    for key in hparams:
        if key not in valid:
            raise ConfigError(
                f"loss {name!r} has no hyper-parameter {key!r}"
                f"{did_you_mean(key, valid)}; valid: {', '.join(valid)}"
            )
    kwargs = {hp.name: hp.default for hp in spec.hparams}
    kwargs.update(hparams)
    return spec.builder(class_counts, **kwargs)


def same_as_loss(
    name: str,
    other: str,
    class_counts: Sequence[int] | torch.Tensor,
    **hparams: float,
) -> bool:
    """Whether loss ``name`` (with ``hparams``) is exactly loss ``other`` (at its defaults) on a
    training set with these class counts. Checked on seeded random logits, not declared: it
    holds or not for these counts and values (``la`` at τ = 1 is ``bs`` on any counts; on a
    balanced set WCE, CB, BS, LA and SEQL below its threshold are CE)."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    k = len(counts)
    if name == other and not hparams:
        return True
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(256, k, generator=generator, dtype=torch.float32) * 4
    target = torch.randint(0, k, (256,), generator=generator)
    rng = torch.random.get_rng_state()  # a loss that draws masks (SEQL) uses the global RNG
    try:
        with torch.no_grad():
            own = build_loss(name, counts, **hparams)(logits, target)
            theirs = build_loss(other, counts)(logits, target)
    finally:
        torch.random.set_rng_state(rng)
    return bool(torch.allclose(own, theirs, rtol=1e-5, atol=1e-6))


def same_as_cross_entropy(
    name: str, class_counts: Sequence[int] | torch.Tensor, **hparams: float
) -> bool:
    """Whether loss ``name`` is exactly the softmax cross-entropy on a training set with these
    class counts (:func:`same_as_loss` with ``ce``): on a balanced set, class weights are
    uniform, a logit shift by the log prior is constant and no class is rare, so WCE, CB, BS, LA
    and SEQL (while its threshold stays below 1/K) are CE, and their runs repeat the CE run
    rather than being findings of their own."""
    return name == "ce" or same_as_loss(name, "ce", class_counts, **hparams)
