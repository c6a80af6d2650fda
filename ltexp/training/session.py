"""A training session: model, loss, optimizer, schedule and data on one device, ready for
:func:`~ltexp.training.loop.fit`, resumed from a checkpoint when there is one.

Also the data-parallel replica protocol: rank 0 broadcasts what it resolved (:class:`ReplicaSetup`);
every other rank rebuilds the same data from the source files (verifying each digest) and trains
the same steps, without MLflow and without writing files.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ltexp.checkpoint import ResumeState, rng_state
from ltexp.config import Config
from ltexp.data import PreparedData, dataset_spec, load_source, rebuild
from ltexp.data.mixing import Mixer
from ltexp.data.pipeline import ImageFormat, TensorBatches, evaluation_batches, training_batches
from ltexp.data.splits import TRAINING_SETS
from ltexp.distributed import DistContext, broadcast
from ltexp.errors import ConfigError
from ltexp.losses import build_loss
from ltexp.models import build_model, model_spec
from ltexp.models.finetune import (
    FinetunePlan,
    add_lora,
    generic_stages,
    layer_decay_groups,
    lora_targets,
    plan_finetune,
)
from ltexp.resources import GIB, resident_budget
from ltexp.training.loop import EpochResult, fit
from ltexp.training.setup import (
    TrainSpec,
    make_scheduler,
    optimizer_for,
    resolve_device,
    seed_everything,
    set_deterministic,
)

log = logging.getLogger(__name__)


@dataclass
class Session:
    """Everything one process trains with, and where training stands."""

    model: torch.nn.Module  # the plain module: checkpoints, validation, registration
    step_model: torch.nn.Module  # what the loop calls: DDP- and/or compile-wrapped
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_batches: TensorBatches
    val_batches: TensorBatches
    amp: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    epochs: int
    groups: dict[str, list[int]]
    is_main: bool = True
    mixer: Mixer | None = None
    finetune: FinetunePlan | None = None
    start_epoch: int = 1
    best_val_acc1: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def resume_from(self, state: ResumeState, path: Path) -> None:
        """Continue after the checkpoint's epoch (see :meth:`ResumeState.restore_into`)."""
        state.restore_into(path, self.model, self.optimizer, self.scheduler)
        self.start_epoch = state.epoch + 1
        self.best_val_acc1, self.best_epoch = state.best_val_acc1, state.best_epoch
        self.history = list(state.history)

    def epochs_left(self) -> Iterator[EpochResult]:
        """Train the remaining epochs; yield each one's result (see :func:`fit`)."""
        return fit(
            self.step_model,
            self.loss_fn,
            self.train_batches,
            self.val_batches,
            self.optimizer,
            self.scheduler,
            epochs=self.epochs,
            start_epoch=self.start_epoch,
            best_val_acc1=self.best_val_acc1,
            best_epoch=self.best_epoch,
            groups=self.groups,
            amp=self.amp,
            grad_scaler=self.scaler,
            is_main=self.is_main,
            eval_model=self.model,
            mixer=self.mixer,
            finetune=self.finetune,
        )

    def resume_state(self, result: EpochResult, config_hash: str) -> ResumeState:
        """The checkpoint after ``result``'s epoch (its metrics already in the history)."""
        return ResumeState(
            epoch=result.epoch,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            best_val_acc1=result.best_val_acc1,
            best_epoch=result.best_epoch,
            history=self.history,
            rng=rng_state(),
            config_hash=config_hash,
        )


def build_seeded_model(cfg: Config, spec: TrainSpec, num_classes: int) -> torch.nn.Module:
    """The model a run trains, on the CPU: weights loaded (or refused), the head (and LoRA's
    adapters) drawn from the run's seed, so building it early (to refuse bad weights before a
    run exists) changes nothing."""
    set_deterministic(cfg.train.deterministic)
    seed_everything(cfg.train.seed)
    t = cfg.train
    model = build_model(t.model, num_classes, pretrained=spec.pretrained, head=spec.head)
    if spec.finetune.mode == "lora":
        mspec = model_spec(t.model)
        targets = lora_targets(model, model_stages(model, t.model), mspec.lora_targets)
        model = add_lora(model, targets, t.lora_rank, t.lora_alpha)
    return model


def model_stages(model: torch.nn.Module, name: str) -> tuple[tuple[str, ...], ...]:
    """The stages of a backbone: its registry entry's, else the generic rule's."""
    spec = model_spec(name)
    return spec.stages or generic_stages(model, spec.classifier)


def finetune_plan(cfg: Config, spec: TrainSpec, model: torch.nn.Module) -> FinetunePlan:
    """What of ``model`` trains when (``finetune``), checked against its stages."""
    return plan_finetune(
        model,
        spec.finetune,
        model_stages(model, cfg.train.model),
        model_spec(cfg.train.model).classifier,
        cfg.train.gradual_epochs,
    )


def build_session(
    cfg: Config,
    prepared: PreparedData,
    spec: TrainSpec,
    ctx: DistContext | None = None,
    model: torch.nn.Module | None = None,
) -> Session:
    """Model (``model``, else built here), loss, optimizer, schedule and data on
    ``spec.device``, at epoch 1."""
    ctx = ctx or DistContext()
    t, rt = cfg.train, cfg.runtime
    device = spec.device
    if model is None:
        model = build_seeded_model(cfg, spec, prepared.num_classes)
    seed_everything(
        t.seed
    )  # training's randomness starts from the seed, however the model was built
    channels_last = rt.channels_last and device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    plan = finetune_plan(cfg, spec, model)
    if ctx.enabled and spec.finetune.mode == "gradual":
        # DDP fixes at construction which parameters it reduces: one unfrozen later would
        # train apart on each rank
        raise ConfigError(
            "finetune=gradual cannot run data-parallel (DDP reduces only the parameters "
            "trainable when it starts); run it on one device, or choose freeze:<k>"
        )
    plan.start_epoch(1)  # before DDP sees which parameters train
    training_set = TRAINING_SETS[t.train_split]
    loss_fn = build_loss(t.loss, prepared.class_counts(training_set), **cfg.loss_hparams()).to(
        device
    )
    exempt = plan.decay_exempt(model) if t.decay_exempt and t.weight_decay else frozenset()
    params = (
        layer_decay_groups(model.named_parameters(), plan.depths, t.lr, t.llrd, exempt)
        if t.llrd != 1.0 or exempt
        else model.parameters()
    )
    optimizer = optimizer_for(cfg, params, device)
    scheduler = make_scheduler(
        t.scheduler,
        optimizer,
        epochs=t.epochs,
        step_size=t.step_size,
        gamma=t.lr_gamma,
        warmup_epochs=t.warmup_epochs,
    )
    image_format = ImageFormat(
        device, spec.image_size, spec.amp or torch.float32, spec.mean, spec.std, channels_last
    )
    split, val = prepared.splits[training_set], prepared.splits["val"]
    resident = resident_budget(rt.data_on_device_gb, device)
    train_batches = training_batches(
        split.images,
        split.labels,
        t.batch_size,
        image_format,
        seed=t.seed,
        epochs=t.epochs,
        sampler=t.sampler,
        augment=resolve_augment(t.augment, prepared),
        rank=ctx.rank,
        world_size=ctx.world_size,
        max_resident_bytes=resident,
    )
    if ctx.is_main:
        log.info(
            "%s: %d images, %.2f GiB of uint8, %s",
            training_set,
            len(split),
            split.images.nbytes / GIB,
            "streamed from host memory (larger than the device budget)"
            if train_batches.streamed
            else f"held on {device}",
        )
    mixer = Mixer(
        t.mixing,
        t.mixing_alpha,
        prepared.class_counts(training_set),
        t.remix_kappa,
        t.remix_tau,
        t.mixing_prob,
    )
    # the validation split gets what the training split left of the budget
    left = resident
    if resident is not None and not train_batches.streamed:
        left = max(resident - split.images.nbytes, 0)
    val_batches = evaluation_batches(val.images, val.labels, rt.eval_batch_size, image_format, left)
    step_model = model
    if ctx.enabled:
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if rt.compile:
        step_model = torch.compile(step_model)
    return Session(
        model=model,
        step_model=step_model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        train_batches=train_batches,
        val_batches=val_batches,
        amp=spec.amp,
        scaler=torch.amp.GradScaler(device.type) if spec.amp == torch.float16 else None,
        epochs=t.epochs,
        groups=prepared.groups(),
        is_main=ctx.is_main,
        mixer=mixer,
        finetune=None if spec.finetune.mode == "full" else plan,
    )


def resolve_augment(augment: str, prepared: PreparedData) -> str:
    """``auto``: the random-resized crop for image-file sets (ImageNet-LT's recipe), the
    protocol's padded crop for CIFAR-style arrays."""
    if augment != "auto":
        return augment
    return "rrc" if "storage_size" in dataset_spec(prepared.dataset).settings else "crop"


@dataclass(frozen=True)
class ReplicaSetup:
    """What rank 0 resolved and every other rank needs to train the same steps."""

    run_id: str
    manifest: dict[str, Any]
    indices: dict[str, Any]
    spec: TrainSpec
    last: Path  # rank 0's resume checkpoint (same filesystem): replicas resume from it too
    config_hash: str


def share_setup(setup: ReplicaSetup | None, ctx: DistContext) -> ReplicaSetup:
    """Rank 0 sends its setup; the other ranks receive it."""
    return broadcast(setup, ctx)


def train_replica(cfg: Config, ctx: DistContext) -> ReplicaSetup:
    """A rank other than 0: rebuild the data, build the same session, train the same epochs."""
    setup = share_setup(None, ctx)
    manifest = setup.manifest
    source = load_source(
        manifest["dataset"], cfg.data.data_root, cfg.data.download, **manifest["dataset_options"]
    )
    prepared = rebuild(source, manifest, setup.indices)  # verifies every digest
    spec = dataclasses.replace(setup.spec, device=resolve_device(cfg.runtime.device))
    session = build_session(cfg, prepared, spec, ctx)
    if setup.last.is_file():
        state = ResumeState.load(setup.last, config_hash=setup.config_hash, epochs=cfg.train.epochs)
        session.resume_from(state, setup.last)
    for _ in session.epochs_left():
        pass
    return setup
