"""What a training run is built from, resolved from the config before anything is created.

:func:`resolve_train` checks a train request (names, values, device, weights file) and returns a
:class:`TrainSpec`; the helpers below turn its settings into PyTorch objects (device, precision,
optimizer, schedule). Nothing here touches the tracking store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LinearLR, SequentialLR

from ltexp import accelerator
from ltexp.config import Config
from ltexp.data.mixing import MIXINGS
from ltexp.data.pipeline import PROTOCOL_MEAN, PROTOCOL_STD
from ltexp.data.samplers import SAMPLERS
from ltexp.errors import ConfigError, unknown_name_error
from ltexp.losses import LOSSES, build_loss
from ltexp.models import build_model, input_size, model_spec
from ltexp.models.finetune import Finetune, parse_finetune
from ltexp.resources import check_fits, image_batch_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    """A train request, checked and resolved (no run, no data, no store yet).

    Attributes:
        device: where training runs.
        head: the classifier head the model gets (``linear`` or ``cosine``).
        image_size: the input side (the model's own when not set).
        pretrained: True, False or a local weights file.
        amp: the autocast dtype (None = fp32).
        finetune: how much of the backbone trains (:mod:`ltexp.models.finetune`).
        mean, std: the input normalisation (``normalize``): the protocol's or the weights'.
    """

    device: torch.device
    head: str
    image_size: int
    pretrained: bool | Path
    amp: torch.dtype | None
    finetune: Finetune = Finetune("full")
    mean: tuple[float, ...] = PROTOCOL_MEAN
    std: tuple[float, ...] = PROTOCOL_STD

    @property
    def precision_name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: what the run logs as ``precision``."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp]


def resolve_image_size(cfg: Config) -> int:
    """The input side: the configured one, else the model's."""
    return input_size(cfg.train.model, cfg.train.image_size)


def parse_pretrained(value: str) -> bool | Path:
    """``true``/``false`` or a path to a local weights file."""
    low = value.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no", "none"):
        return False
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"pretrained must be true, false or a path to a weights file; {value!r} is not a file"
        )
    return path


def resolve_normalization(cfg: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean and std: the protocol's (``normalize=cifar``) or the pretrained weights'
    own, from the library's metadata (``normalize=weights``).

    Raises:
        ConfigError: ``weights`` for a model that has no pretrained weights.
    """
    if cfg.train.normalize == "cifar":
        return PROTOCOL_MEAN, PROTOCOL_STD
    spec = model_spec(cfg.train.model)
    if spec.normalization is None:
        raise ConfigError(
            f"normalize=weights: {cfg.train.model} has no pretrained weights, so no statistics "
            f"of its own; use normalize=cifar"
        )
    return spec.normalization()


def check_weights(cfg: Config, spec: TrainSpec) -> None:
    """Load the configured weights into a model on the meta device (no memory, no data needed):
    a missing download, a file that is not a state dict, a model without weights are refused
    before anything is prepared or created."""
    with torch.device("meta"):
        build_model(cfg.train.model, 2, pretrained=spec.pretrained, head=spec.head)


def resolve_train(cfg: Config) -> TrainSpec:
    """Check every part of a train request that needs no data; resolve it.

    Raises:
        ConfigError: an unknown model or loss, a bad hyper-parameter, a device that is not
            here, an image size the model cannot take, a weights path that is not a file.
    """
    t = cfg.train
    spec = model_spec(t.model)
    if t.loss not in LOSSES:
        raise unknown_name_error("loss", t.loss, list(LOSSES))
    if t.sampler not in SAMPLERS:
        raise unknown_name_error("sampler", t.sampler, list(SAMPLERS))
    if t.mixing not in MIXINGS:
        raise unknown_name_error("mixing", t.mixing, MIXINGS)
    build_loss(t.loss, [2, 1], **cfg.loss_hparams())  # hyper-parameters, before any data
    device = resolve_device(cfg.runtime.device)
    image_size = resolve_image_size(cfg)
    if spec.fixed_input_size and image_size != spec.input_size:
        raise ConfigError(
            f"model {t.model} takes {spec.input_size}×{spec.input_size} images "
            f"only, got image_size={image_size}"
        )
    check_fits(
        image_batch_bytes(t.batch_size, image_size),
        f"a training batch of {t.batch_size} images of {image_size}×{image_size}",
        "lower image_size or batch_size",
        device=str(device),
    )
    if t.warmup_epochs >= t.epochs:
        raise ConfigError(
            f"warmup_epochs={t.warmup_epochs} must be below epochs={t.epochs} (the schedule "
            f"starts after the warmup)"
        )
    finetune = parse_finetune(t.finetune)
    if finetune.mode == "freeze" and spec.stages and finetune.frozen_stages > len(spec.stages):
        raise ConfigError(
            f"finetune={t.finetune}: {t.model} has {len(spec.stages)} stages; freeze:<k> takes k "
            f"from 1 to {len(spec.stages)} (finetune=linear freezes everything but the "
            f"classifier)"
        )
    mean, std = resolve_normalization(cfg)
    if finetune.mode != "full" and parse_pretrained(t.pretrained) is False:
        log.warning(
            "finetune=%s on %s without pretrained weights: the frozen layers keep their random "
            "initialisation, so only what it trains learns anything; use finetune=full, or "
            "pretrained weights",
            t.finetune,
            t.model,
        )
    if t.drw_epoch is not None and t.drw_epoch >= t.epochs:
        log.warning(
            "drw_epoch=%s >= epochs=%s: class weights never switch on", t.drw_epoch, t.epochs
        )
    return TrainSpec(
        device=device,
        head=cfg.train.head,
        image_size=image_size,
        pretrained=parse_pretrained(t.pretrained),
        amp=autocast_dtype(cfg.runtime.precision, device),
        finetune=finetune,
        mean=tuple(mean),
        std=tuple(std),
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (bit-identical reruns) or the fastest ones."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.are_deterministic_algorithms_enabled() != enabled:  # the switch costs ~0.5 s
        torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; a CUDA device without a GPU is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name} but no CUDA GPU is available here; use device=cpu or device=auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name} but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type not in ("cpu", "mps"):
        raise ConfigError(f"unsupported device {name!r}; valid: auto, cpu, cuda, cuda:N")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype: ``auto`` is bf16 on CUDA, none (fp32) elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast context (a no-op for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_optimizer(
    name: str,
    params: Iterator[nn.Parameter],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    momentum: float,
    device: torch.device,
) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD (on CUDA with fused kernels: :mod:`ltexp.accelerator`)."""
    options = accelerator.optimizer_options(device)
    if name == "adam":
        return torch.optim.Adam(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **options
        )
    if name == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **options
        )
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, **options
        )
    raise ConfigError(f"unknown optimizer {name!r}; valid: adam, adamw, sgd")


def optimizer_for(
    cfg: Config, params: Iterator[nn.Parameter], device: torch.device, lr: float | None = None
) -> torch.optim.Optimizer:
    """:func:`make_optimizer` with the config's optimizer settings (``lr`` instead of its lr)."""
    t = cfg.train
    return make_optimizer(
        t.optimizer,
        params,
        lr=t.lr if lr is None else lr,
        betas=t.betas,
        eps=t.eps,
        weight_decay=t.weight_decay,
        momentum=t.momentum,
        device=device,
    )


def make_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    step_size: int,
    gamma: float,
    warmup_epochs: int = 0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: StepLR (thesis: ×0.1 every 30 epochs), cosine, or constant; after
    ``warmup_epochs`` of linear warmup (epoch e of w at lr·e/(w+1)), the schedule runs over the
    remaining epochs."""
    if warmup_epochs:
        warmup = LinearLR(optimizer, 1.0 / (warmup_epochs + 1), 1.0, total_iters=warmup_epochs)
        main = make_scheduler(
            name, optimizer, epochs=epochs - warmup_epochs, step_size=step_size, gamma=gamma
        )
        return SequentialLR(optimizer, [warmup, main], milestones=[warmup_epochs])
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ConfigError(f"unknown scheduler {name!r}; valid: step, cosine, none")
