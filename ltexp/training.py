"""The training loop: plain PyTorch, readable top to bottom, no MLflow in it.

:func:`fit` is a generator: it trains one epoch, validates, and yields an :class:`EpochResult`;
the caller (``ltexp.steps.train``) checkpoints and logs between epochs. Nothing in the step loop
waits on the GPU: losses and accuracies are accumulated as device tensors and read once per epoch
(or when the progress bar refreshes, only when it is shown).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltexp.data.pipeline import TensorBatches
from ltexp.distributed import all_reduce_sum, is_distributed
from ltexp.errors import ConfigError, TrainingError
from ltexp.losses.base import ClassAwareLoss

PROGRESS_EVERY = 25  # steps between progress-bar refreshes (each one is a device sync)


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
    """Adam / AdamW / SGD; fused kernels on CUDA (one launch for all parameters)."""
    fused = {"fused": True} if device.type == "cuda" else {}
    if name == "adam":
        return torch.optim.Adam(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **fused
        )
    if name == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **fused
        )
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **fused)
    raise ConfigError(f"unknown optimizer {name!r}; valid: adam, adamw, sgd")


def make_scheduler(
    name: str, optimizer: torch.optim.Optimizer, *, epochs: int, step_size: int, gamma: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: StepLR (SPEC: ×0.1 every 30 epochs), cosine, or constant."""
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ConfigError(f"unknown scheduler {name!r}; valid: step, cosine, none")


@dataclass
class EpochResult:
    """What one epoch measured (plain floats)."""

    epoch: int
    metrics: dict[str, float]
    improved: bool
    best_val_acc1: float
    best_epoch: int


@dataclass
class ValidationResult:
    """Accuracy and loss on a labelled split, overall and per class group."""

    loss: float
    acc1: float
    group_acc1: dict[str, float] = field(default_factory=dict)


@torch.inference_mode()
def predict(model: nn.Module, batches: TensorBatches, amp: torch.dtype | None) -> Tensor:
    """Float32 logits ``[N, K]`` of a whole split, in its order, on its device."""
    model.eval()
    outs = []
    with autocast(batches.device, amp):
        for x, _ in batches.epoch(0):
            outs.append(model(x).float())
    return torch.cat(outs)


def validate(
    model: nn.Module,
    batches: TensorBatches,
    groups: dict[str, list[int]],
    num_classes: int,
    amp: torch.dtype | None,
) -> ValidationResult:
    """Cross-entropy and top-1 on a split, and top-1 of each class group (one device sync).

    The validation loss is plain cross-entropy whatever the training loss, so runs with
    different losses compare on it.
    """
    logits = predict(model, batches, amp)
    labels = batches.labels
    loss = F.cross_entropy(logits, labels, reduction="sum")
    correct = logits.argmax(1) == labels
    per_class_correct = torch.bincount(labels[correct], minlength=num_classes)
    per_class_total = torch.bincount(labels, minlength=num_classes)
    stats = torch.stack([loss, correct.sum().float()]).tolist()  # the sync
    hits, totals = per_class_correct.tolist(), per_class_total.tolist()
    n = len(labels)
    group_acc = {}
    for name, classes in groups.items():
        total = sum(totals[c] for c in classes)
        if total:
            group_acc[name] = sum(hits[c] for c in classes) / total
    return ValidationResult(stats[0] / n, stats[1] / n, group_acc)


@dataclass
class EpochStats:
    """What one pass over the training set measured (plain numbers, read once)."""

    loss: float
    acc1: float
    images: int
    seconds: float


def train_one_epoch(
    model: nn.Module,
    loss_fn: ClassAwareLoss,
    batches: TensorBatches,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    *,
    amp: torch.dtype | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
    show_progress: bool = False,
    epochs: int | None = None,
) -> EpochStats:
    """One pass over ``batches`` (epoch ``epoch``'s order and augmentation).

    Raises:
        TrainingError: a non-finite loss (naming the epoch and step).
    """
    device = batches.device
    model.train()
    loss_fn.set_epoch(epoch)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    seen = 0
    started = time.perf_counter()
    bar = _progress(len(batches), epoch, epochs or epoch, show_progress)
    for step, (x, y) in enumerate(batches.epoch(epoch), start=1):
        with autocast(device, amp):
            logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if grad_scaler is not None:
            grad_scaler.scale(loss).backward()
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            loss.backward()
            optimizer.step()
        # accumulate on the device: no host sync per step
        detached = loss.detach()
        loss_sum += detached * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        first_bad = torch.where(~torch.isfinite(detached) & (first_bad < 0), step, first_bad)
        seen += len(y)
        if bar is not None:
            bar.update(1)
            if step % PROGRESS_EVERY == 0:  # a sync, only when a person is watching
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
                if not is_distributed():  # ranks must stop together, at the epoch's end
                    _raise_if_nonfinite(first_bad, epoch)
    if bar is not None:
        bar.close()
    # the epoch's one sync: totals over every rank
    totals = torch.stack(
        [loss_sum, correct.float(), torch.full_like(loss_sum, seen), (first_bad >= 0).float()]
    )
    total_loss, total_correct, total_seen, bad_ranks = all_reduce_sum(totals).tolist()
    if bad_ranks:
        _raise_if_nonfinite(first_bad, epoch)
        raise TrainingError(f"loss became non-finite (nan/inf) at epoch {epoch} on another rank")
    return EpochStats(
        total_loss / total_seen,
        total_correct / total_seen,
        int(total_seen),
        time.perf_counter() - started,
    )


def fit(
    model: nn.Module,
    loss_fn: ClassAwareLoss,
    train_batches: TensorBatches,
    val_batches: TensorBatches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    epochs: int,
    start_epoch: int = 1,
    best_val_acc1: float = -1.0,
    best_epoch: int = 0,
    groups: dict[str, list[int]],
    amp: torch.dtype | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
    progress: bool | None = None,
    is_main: bool = True,
    eval_model: nn.Module | None = None,
) -> Iterator[EpochResult]:
    """Train epochs ``start_epoch..epochs`` (1-based); yield a result after each.

    Raises:
        TrainingError: a non-finite loss (naming the epoch and step).
    """
    show = (sys.stderr.isatty() if progress is None else progress) and is_main
    for epoch in range(start_epoch, epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(
            model,
            loss_fn,
            train_batches,
            optimizer,
            epoch,
            amp=amp,
            grad_scaler=grad_scaler,
            show_progress=show,
            epochs=epochs,
        )
        scheduler.step()
        # every rank validates the same set with its plain module: no collectives, same result
        val = validate(eval_model or model, val_batches, groups, loss_fn.num_classes, amp)
        improved = val.acc1 > best_val_acc1
        if improved:
            best_val_acc1, best_epoch = val.acc1, epoch
        metrics = {
            "train_loss": train.loss,
            "train_acc1": train.acc1,
            "val_loss": val.loss,
            "val_acc1": val.acc1,
            **{f"val_{g}_acc1": a for g, a in val.group_acc1.items()},
            "lr": lr,
            "epoch_seconds": time.perf_counter() - started,
            "images_per_s": train.images / train.seconds,
        }
        yield EpochResult(epoch, metrics, improved, best_val_acc1, best_epoch)


def _raise_if_nonfinite(first_bad: Tensor, epoch: int) -> None:
    step = int(first_bad.item())
    if step >= 0:
        raise TrainingError(
            f"loss became non-finite (nan/inf) at epoch {epoch}, step {step}; "
            f"lower lr, check the data, or use precision=fp32"
        )


def _progress(total: int, epoch: int, epochs: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True)
