"""The training loop: plain PyTorch, readable top to bottom, no MLflow in it.

:func:`fit` is a generator: it trains one epoch, validates, and yields an :class:`EpochResult`
whose metric names are the schema's; the caller (``ltexp.steps.train``) checkpoints and logs
between epochs. Nothing in the step loop waits on the GPU: losses and accuracies are accumulated as
device tensors and read once per epoch (or when the progress bar refreshes, only when it is shown).
Progress (:mod:`ltexp.progress`) is a bar on a terminal and a line every 30 s otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltexp import schema
from ltexp.data.mixing import Mixer
from ltexp.data.pipeline import TensorBatches
from ltexp.distributed import all_reduce_sum, is_distributed
from ltexp.errors import TrainingError
from ltexp.losses.base import ClassAwareLoss
from ltexp.models.finetune import FinetunePlan
from ltexp.progress import Progress
from ltexp.training.setup import autocast

PROGRESS_EVERY = 25  # steps between progress-bar refreshes (each one is a device sync)


@dataclass
class EpochResult:
    """What one epoch measured (plain floats)."""

    epoch: int
    metrics: dict[str, float]
    improved: bool
    best_val_acc1: float
    best_epoch: int


@dataclass
class TrainResult:
    """What a finished training (a train or decouple step) produced: its run, best validation
    and registered version (``model_uri`` is empty when nothing was registered, e.g. on a
    data-parallel replica)."""

    run_id: str
    best_val_acc1: float
    best_epoch: int
    model_uri: str


@dataclass
class ValidationResult:
    """Accuracy and loss on a labelled split, overall and per class group."""

    loss: float
    acc1: float
    group_acc1: dict[str, float] = field(default_factory=dict)
    balanced_acc1: float = 0.0  # the mean of the per-class accuracies


@torch.inference_mode()
def predict(
    model: nn.Module, batches: TensorBatches, amp: torch.dtype | None, desc: str = ""
) -> Tensor:
    """Float32 logits ``[N, K]`` of a whole split, in its order, on its device.

    ``desc`` names the pass in progress lines (none without it).
    """
    model.eval()
    outs = []
    progress = Progress(len(batches), desc, enabled=bool(desc))
    with autocast(batches.device, amp):
        for x, y in batches.epoch(0):
            outs.append(model(x).float())
            progress.update(len(y))
    progress.close()
    return torch.cat(outs)


def validate(
    model: nn.Module,
    batches: TensorBatches,
    groups: dict[str, list[int]],
    num_classes: int,
    amp: torch.dtype | None,
    desc: str = "",
) -> ValidationResult:
    """Cross-entropy and top-1 on a split, and top-1 of each class group (one device sync).

    The validation loss is plain cross-entropy whatever the training loss, so runs with
    different losses compare on it.
    """
    logits = predict(model, batches, amp, desc)
    labels = batches.labels
    loss = F.cross_entropy(logits, labels, reduction="sum")
    correct = logits.argmax(1) == labels
    per_class_correct = torch.bincount(labels[correct], minlength=num_classes)
    per_class_total = torch.bincount(labels, minlength=num_classes)
    stats = torch.stack([loss, correct.sum().float()]).tolist()  # the sync
    hits, totals = per_class_correct.tolist(), per_class_total.tolist()
    n = len(labels)
    present = [c for c in range(num_classes) if totals[c]]
    balanced = sum(hits[c] / totals[c] for c in present) / max(len(present), 1)
    group_acc = {}
    for name, classes in groups.items():
        total = sum(totals[c] for c in classes)
        if total:
            group_acc[name] = sum(hits[c] for c in classes) / total
    return ValidationResult(stats[0] / n, stats[1] / n, group_acc, balanced)


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
    mixer: Mixer | None = None,
    finetune: FinetunePlan | None = None,
) -> EpochStats:
    """One pass over ``batches`` (epoch ``epoch``'s order and augmentation); ``finetune``
    decides which parameters train in it (None: all).

    Raises:
        TrainingError: a non-finite loss (naming the epoch and step).
    """
    device = batches.device
    model.train()
    if finetune is not None:
        finetune.start_epoch(epoch)
    loss_fn.set_epoch(epoch)
    mixing = mixer is not None and mixer.active
    if mixing:
        mixer.start_epoch(batches.seed, epoch)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    seen = 0
    started = time.perf_counter()
    progress = Progress(len(batches), f"epoch {epoch}/{epochs or epoch}", enabled=show_progress)
    for step, (x, y) in enumerate(batches.epoch(epoch), start=1):
        if mixing:
            mixed = mixer(x, y)
            x = mixed.images
        with autocast(device, amp):
            logits = model(x)
        loss = (
            loss_fn.mixed(logits, mixed.y_a, mixed.y_b, mixed.weight_a)
            if mixing
            else loss_fn(logits, y)
        )
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
        progress.update(len(y))
        if progress.has_bar and step % PROGRESS_EVERY == 0:  # a sync, only when watched
            progress.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
            if not is_distributed():  # ranks must stop together, at the epoch's end
                _raise_if_nonfinite(first_bad, epoch)
    progress.close()
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
    mixer: Mixer | None = None,
    finetune: FinetunePlan | None = None,
) -> Iterator[EpochResult]:
    """Train epochs ``start_epoch..epochs`` (1-based); yield a result after each.

    Raises:
        TrainingError: a non-finite loss (naming the epoch and step).
    """
    show = progress is not False and is_main
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
            mixer=mixer,
            finetune=finetune,
        )
        scheduler.step()
        # every rank validates the same set with its plain module: no collectives, same result
        val = validate(
            eval_model or model,
            val_batches,
            groups,
            loss_fn.num_classes,
            amp,
            desc=f"validation {epoch}/{epochs}" if show else "",
        )
        improved = val.acc1 > best_val_acc1
        if improved:
            best_val_acc1, best_epoch = val.acc1, epoch
        metrics = {
            schema.TRAIN_LOSS: train.loss,
            schema.TRAIN_ACC1: train.acc1,
            schema.VAL_LOSS: val.loss,
            schema.VAL_ACC1: val.acc1,
            schema.VAL_BALANCED_ACC1: val.balanced_acc1,
            **{schema.val_metric(g): a for g, a in val.group_acc1.items()},
            schema.LR: lr,
            **({schema.TRAINABLE_PARAMS: finetune.trainable_count(epoch)} if finetune else {}),
            schema.EPOCH_SECONDS: time.perf_counter() - started,
            schema.IMAGES_PER_S: train.images / train.seconds,
            **_visits(train_batches, epoch, groups),
        }
        yield EpochResult(epoch, metrics, improved, best_val_acc1, best_epoch)


def _visits(batches: TensorBatches, epoch: int, groups: dict[str, list[int]]) -> dict[str, float]:
    """Training images the epoch drew from each frequency group (what a sampler changes)."""
    per_class = batches.visits(epoch).tolist()
    return {
        schema.sampled_metric(g): float(sum(per_class[c] for c in groups[g] if c < len(per_class)))
        for g in schema.FREQUENCY_GROUPS
        if g in groups
    }


def _raise_if_nonfinite(first_bad: Tensor, epoch: int) -> None:
    step = int(first_bad.item())
    if step >= 0:
        raise TrainingError(
            f"loss became non-finite (nan/inf) at epoch {epoch}, step {step}; "
            f"lower lr, check the data, or use precision=fp32"
        )
