"""Typed configuration: dataclass sections, YAML presets, command-line overrides.

Every default lives here, next to the reason for it. Defaults are the protocol of the thesis
(docs/protocol.md); presets in ``configs/`` hold only what differs (``demo.yaml``: the embedded
digits data and small models; ``thesis.yaml``: the full grid).

Keys are unique across sections, so every value has one flat name: ``lr`` in YAML under ``train:``,
``--lr`` on the command line, ``-P lr=...`` in ``mlflow run``. Each field describes itself: its
help, its checks, whether it only changes how a run executes (``runtime``: left out of every
identity hash), and which commands take it. Loss hyper-parameters (``<loss>_<hparam>``, e.g.
``focal_gamma``) and dataset options (e.g. ``synthetic_classes``) are declared by their registry
entries, so a new loss or dataset needs no edit here. YAML is read with ``yaml.safe_load`` only;
unknown keys are rejected with the valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ltexp.errors import ConfigError, did_you_mean, unknown_name_error

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
DEMO_PRESET = "demo"  # the embedded digits, small models from scratch: runs on a CPU
PROTOCOL_PRESET = "thesis"  # the protocol: CIFAR-100, the four pretrained backbones
DEFAULT_PRESET = DEMO_PRESET
COMMANDS = ("prepare-data", "train", "evaluate", "aggregate", "main")


def _opt(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] = (),
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
    factory: Any = None,
    runtime: bool = False,
    registry: str = "",
    commands: tuple[str, ...] = (),
    also_under: str = "",
    key: str = "",
) -> Any:
    """A config field: default, one-line help, checks, and what the field is.

    Args:
        runtime: the value changes how a run executes (device, threads, folders), never what it
            computes; identity hashes leave it out, so runs that differ only here are the same.
        registry: the registry whose names the value takes; the help lists them.
        commands: the commands that take the field (default: its section's commands).
        also_under: a YAML section where presets written before the field moved may still give it.
        key: the flat name (``-P key=…``, ``--key``) when the field's own name is another
            section's key (``study.mixing`` is ``study_mixing``; ``mixing`` is the cell's).
    """
    meta = {
        "help": help,
        "choices": choices,
        "low": low,
        "low_open": low_open,
        "high": high,
        "high_open": high_open,
        "runtime": runtime,
        "registry": registry,
        "commands": commands,
        "also_under": also_under,
        "key": key,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    """Which data, and the split protocol built from it (docs/protocol.md, "Data")."""

    dataset: str = _opt("cifar100", "dataset name", registry="datasets")
    data_root: str = _opt(
        "~/.cache/ltexp",
        "folder the dataset files are read from / downloaded to",
        runtime=True,
        commands=("prepare-data", "train", "evaluate", "main", "tune", "decouple"),
    )
    download: bool = _opt(
        True,
        "download the dataset when its files are missing",
        runtime=True,
        commands=("prepare-data", "train", "evaluate", "main", "tune", "decouple"),
    )
    profile: str = _opt("exp", "imbalance profile of the long-tailed splits", registry="profiles")
    imbalance_ratio: float = _opt(
        100.0, "n_max / n_min of the long-tailed splits (thesis: 100)", low=1.0
    )
    pareto_alpha: float = _opt(
        6.0, "shape of the pareto profile (ImageNet-LT, Liu et al. 2019: 6)", low=0.0, low_open=True
    )
    n_max_train: int | None = _opt(
        None,
        "images per class in train_balanced (default: the dataset's protocol, CIFAR-100: 450)",
        low=1,
    )
    n_max_test: int | None = _opt(None, "images per class in test_balanced (CIFAR-100: 50)", low=1)
    class_order: str = _opt(
        "label",
        "frequency rank of the classes: label (class 0 most "
        "frequent), random (seeded), or a comma list of labels",
    )
    split_seed: int = _opt(42, "seed of every split choice (thesis: 42)", low=0)
    split_mode: str = _opt(
        "auto",
        "protocol (long-tailed splits drawn from a balanced source, CIFAR), given (the set is "
        "long-tailed as given: its train set is train_lt, ImageNet-LT and own folders), or auto "
        "(the dataset's kind)",
        choices=("auto", "protocol", "given"),
    )
    holdout_fraction: float = _opt(
        0.1,
        "given splits: share of each class carved from train for a val or test set the data lacks",
        low=0.0,
        low_open=True,
        high=0.5,
    )
    storage_size: int = _opt(
        256,
        "image files (imagefolder, filelist): shorter side they are resized to, then centre-"
        "cropped square, in the decoded uint8 cache",
        low=8,
    )
    skip_bad_images: bool = _opt(
        False,
        "image files: skip an unreadable image (counted, listed in skipped_images.txt) instead "
        "of stopping at it",
    )
    log_scale_counts: bool = _opt(True, "draw the class-count charts on a log scale", runtime=True)


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning (docs/protocol.md, "Training"). Defaults are the thesis protocol."""

    model: str = _opt("resnet50", "backbone", registry="models")
    loss: str = _opt("ce", "loss", registry="losses")
    train_split: str = _opt(
        "lt", "training set: lt (long-tailed) or balanced", choices=("lt", "balanced")
    )
    seed: int = _opt(42, "seed of Python, NumPy and torch (thesis: 42)", low=0)
    pretrained: str = _opt(
        "true", "true (library weights), false (random init) or a path to a local state dict"
    )
    head: str = _opt(
        "linear",
        "classifier head: linear (the protocol's 100-way layer, for every loss) or cosine (the "
        "normalised classifier Cao et al. 2019 paired LDAM with)",
        choices=("linear", "cosine"),
    )
    image_size: int | None = _opt(
        None, "input side in pixels (default: the model's, 224 for the pretrained backbones)", low=8
    )
    optimizer: str = _opt("adam", "optimizer", choices=("adam", "adamw", "sgd"))
    lr: float = _opt(1e-3, "learning rate (thesis: Adam 1e-3)", low=0.0, low_open=True)
    betas: tuple[float, float] = _opt(
        (0.9, 0.999), "Adam betas (thesis: 0.9,0.999)", low=0.0, high=1.0, high_open=True
    )
    eps: float = _opt(1e-8, "Adam epsilon (thesis: 1e-8)", low=0.0, low_open=True)
    weight_decay: float = _opt(0.0, "weight decay (thesis: none)", low=0.0)
    momentum: float = _opt(0.9, "SGD momentum (only with optimizer=sgd)", low=0.0, high=1.0)
    batch_size: int = _opt(128, "training batch size (thesis: 128)", low=1)
    epochs: int = _opt(90, "training epochs (thesis: 90)", low=1)
    scheduler: str = _opt("step", "learning-rate schedule", choices=("step", "cosine", "none"))
    step_size: int = _opt(30, "StepLR period in epochs (thesis: 30)", low=1)
    lr_gamma: float = _opt(0.1, "StepLR factor (thesis: 0.1)", low=0.0, low_open=True, high=1.0)
    drw_epoch: int | None = _opt(
        None,
        "deferred re-weighting: class weights switch on from this "
        "epoch (Cao et al. 2019 use 160 of 200)",
        low=0,
    )
    drw_beta: float = _opt(
        0.9999,
        "beta of the class-balanced DRW weights (Cao et al. 2019)",
        low=0.0,
        high=1.0,
        high_open=True,
    )
    sampler: str = _opt(
        "instance",
        "which images an epoch visits (Kang et al. 2020; ltexp/data/samplers.py)",
        registry="samplers",
    )
    augment: str = _opt(
        "auto",
        "training augmentation: crop (resize, 4 px padded crop, flip: the CIFAR protocol), rrc "
        "(random-resized crop to image_size and flip: the ImageNet-LT recipe), or auto (rrc for "
        "image-file sets, crop otherwise)",
        choices=("auto", "crop", "rrc"),
    )
    mixing: str = _opt("none", "batch mixing (ltexp/training/mixing.py)", registry="mixings")
    mixing_alpha: float = _opt(
        1.0,
        "α of the Beta(α, α) mixing factor (mixup, CutMix, Remix papers: 1)",
        low=0.0,
        low_open=True,
    )
    remix_kappa: float = _opt(
        3.0,
        "Remix κ: the class-size ratio that favours the rarer class (Chou et al. 2020: 3)",
        low=1.0,
    )
    remix_tau: float = _opt(
        0.5,
        "Remix τ: the mixing factor below which the rarer label wins (Chou et al. 2020: 0.5)",
        low=0.0,
        high=1.0,
    )
    deterministic: bool = _opt(False, "deterministic kernels (bit-identical reruns and resumes)")
    data_run: str = _opt(
        "",
        "prepare_data run id (default: the latest matching one, or prepare the data first)",
        runtime=True,
    )
    resume: str = _opt(
        "",
        "train run id to resume (default: resume an unfinished run of the same config, if any)",
        runtime=True,
    )
    evaluate_after: bool = _opt(
        True,
        "evaluate the best checkpoint at the end (a child run)",
        runtime=True,
        commands=("train", "main", "tune", "decouple"),
    )
    register: bool = _opt(
        True,
        "register the best checkpoint in the Model Registry (a tuning trial is not registered)",
        runtime=True,
    )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how fast a run executes: the hardware side of train and evaluate."""

    device: str = _opt(
        "auto", "auto (cuda when available), cpu, cuda, cuda:N", runtime=True, also_under="train"
    )
    # not runtime: the arithmetic precision changes the numbers a run produces
    precision: str = _opt(
        "auto",
        "auto (bf16 autocast on CUDA, fp32 on CPU), bf16, fp16, fp32",
        choices=("auto", "bf16", "fp16", "fp32"),
        also_under="train",
    )
    channels_last: bool = _opt(
        True,
        "channels_last memory format on CUDA (faster convolutions)",
        runtime=True,
        also_under="train",
    )
    compile: bool = _opt(
        False,
        "torch.compile the model (slower start, faster steps on GPU)",
        runtime=True,
        commands=("train", "main", "tune"),
        also_under="train",
    )
    num_threads: int | None = _opt(
        None, "torch CPU threads (default: torch's)", low=1, runtime=True, also_under="train"
    )
    data_on_device_gb: float | None = _opt(
        None,
        "GiB of device memory a training split may take; a larger one is streamed from pinned "
        "host memory (default: half the GPU's free memory; 0 always streams)",
        low=0.0,
        runtime=True,
        commands=("train", "main", "tune", "decouple"),
    )
    eval_batch_size: int = _opt(
        512,
        "validation/test batch size: inference needs no activations "
        "for backward, so larger batches are faster and exact",
        low=1,
        runtime=True,
        also_under="train",
    )
    system_metrics: bool = _opt(
        True,
        "log MLflow system metrics (CPU, memory, GPU)",
        runtime=True,
        commands=("train", "main", "tune"),
        also_under="train",
    )
    checkpoint_dir: str = _opt(
        "~/.cache/ltexp/checkpoints",
        "where per-epoch resume checkpoints are kept (one folder per run id)",
        runtime=True,
        commands=("train", "main", "tune"),
        also_under="train",
    )


@dataclass(frozen=True)
class EvaluateConfig:
    """Testing the best-validation checkpoint (docs/protocol.md, "Evaluation")."""

    train_run: str = _opt("", "train run id whose registered checkpoint is evaluated")
    model_uri: str = _opt("", "or a model URI (models:/<name>@champion, runs:/<id>/model)")
    tau: float = _opt(
        0.0,
        "post-hoc logit adjustment logits - tau*log(prior) (Menon et al. 2021; 0 = off)",
        low=0.0,
    )
    bootstrap_samples: int = _opt(
        1000,
        "bootstrap resamples for the 95% intervals (more than 100,000 do not move an interval's "
        "third decimal)",
        low=10,
        high=100_000,
    )
    bootstrap_seed: int = _opt(0, "seed of the bootstrap resampling", low=0)


@dataclass(frozen=True)
class StudyConfig:
    """The grid of the study (docs/protocol.md, "The grid and the report")."""

    models: list[str] = _opt(
        None,
        "backbones of the grid",
        factory=lambda: ["resnet50", "mobilenet_v2", "vit_b16", "convnext_base"],
        registry="models",
    )
    losses: list[str] = _opt(
        None,
        "losses of the grid (the thesis's table order)",
        factory=lambda: ["ce", "focal", "wce", "cb", "bs", "seql", "ldam"],
        registry="losses",
    )
    train_splits: list[str] = _opt(
        None, "training sets of the grid", factory=lambda: ["balanced", "lt"]
    )
    seeds: list[int] = _opt(None, "training seeds of the grid", factory=lambda: [42], low=0)
    samplers: list[str] = _opt(
        None, "samplers of the grid", factory=lambda: ["instance"], registry="samplers"
    )
    mixing: list[str] = _opt(
        None,
        "batch mixings of the grid",
        factory=lambda: ["none"],
        registry="mixings",
        key="study_mixing",
    )
    stage2: list[str] = _opt(
        None,
        "second stages of the grid: none (the trained model) or a decoupling method (crt, "
        "tau_norm, lws), applied to the cell's stage-1 model",
        factory=lambda: ["none"],
        key="study_stage2",
    )
    workers: int = _opt(
        1, "cells run at once (one per GPU when there are GPUs)", low=1, runtime=True
    )
    executor: str = _opt(
        "local",
        "where cells run: local (this machine) or ray (a Ray cluster)",
        choices=("local", "ray"),
        runtime=True,
    )
    ray_address: str = _opt(
        "",
        "Ray cluster address (auto = the running cluster; empty = start a local one)",
        runtime=True,
    )
    force: bool = _opt(False, "re-run cells that already finished", runtime=True)
    tuned: bool = _opt(
        False,
        "train each (model, loss, training set) cell with the best hyper-parameters its latest "
        "finished `ltexp tune` found (cells never tuned keep the configured ones)",
    )


@dataclass(frozen=True)
class TuneConfig:
    """A hyper-parameter search on the validation set (``ltexp tune``, ltexp/tuning.py)."""

    space: list[str] = _opt(
        None,
        "search space, key=distribution:arguments, comma-free entries repeated or in YAML: "
        "uniform:LOW:HIGH, loguniform:LOW:HIGH, int:LOW:HIGH, logint:LOW:HIGH, choice:A|B|C "
        "(e.g. lr=loguniform:1e-5:1e-2)",
        factory=list,
    )
    trials: int = _opt(20, "trials of the search (finished or pruned), over all workers", low=1)
    timeout: float | None = _opt(
        None,
        "stop starting trials after this many seconds (default: no limit)",
        low=0.0,
        low_open=True,
    )
    objective: str = _opt(
        "val_acc1",
        "the validation metric to maximise, best over epochs: val_acc1, val_balanced_acc1 or "
        "val_<group>_acc1 (never a test split)",
    )
    tune_sampler: str = _opt("tpe", "Optuna sampler (seeded)", choices=("tpe", "random"))
    pruner: str = _opt(
        "median",
        "stop weak trials early on the per-epoch objective: median, asha (successive halving) "
        "or none",
        choices=("median", "asha", "none"),
    )
    tune_seed: int = _opt(0, "seed of the sampler", low=0)
    study_name: str = _opt(
        "",
        "Optuna study name: workers with the same name and storage share one search (default: "
        "derived from the cell, the space and the objective)",
    )
    tune_storage: str = _opt(
        "",
        "Optuna storage URL (default: the MLflow store's database where it is PostgreSQL or "
        "sqlite; else sqlite:///optuna.db here)",
        runtime=True,
    )


@dataclass(frozen=True)
class DecoupleConfig:
    """The second stage of Kang et al. 2020 (``ltexp decouple``, ltexp/training/decoupling.py).

    Defaults are the paper's: 10 epochs of class-balanced classifier re-training with a cosine
    schedule; τ chosen on the validation set.
    """

    stage2: str = _opt(
        "none",
        "decoupling method: none, crt (re-train the classifier), tau_norm (rescale its rows) "
        "or lws (learn one scale per class)",
        choices=("none", "crt", "tau_norm", "lws"),
        commands=("train", "decouple"),  # a study's second stages are study_stage2
    )
    stage2_epochs: int = _opt(10, "epochs of cRT and LWS (Kang et al. 2020: 10)", low=1)
    stage2_lr: float | None = _opt(
        None,
        "learning rate of cRT and LWS (default: the stage-1 run's lr), cosine-annealed",
        low=0.0,
        low_open=True,
    )
    stage2_tau: float | None = _opt(
        None,
        "τ of tau_norm (default: the best of 0, 0.1, …, 1 on the validation set)",
        low=0.0,
        high=2.0,
    )


@dataclass(frozen=True)
class ReportConfig:
    """The aggregate step: tables and figures from the tracking server."""

    output_dir: str = _opt(
        "", "where the report is written (default reports/<experiment>/)", runtime=True
    )
    report_dataset: str = _opt("", "dataset to report when an experiment holds several")
    percent: bool = _opt(
        False, "print percentages with two decimals, as the thesis text does (CSVs stay fractions)"
    )
    intervals: bool = _opt(True, "show each single-seed cell's 95% bootstrap interval in report.md")
    references: str = _opt(
        "",
        "CSV of published results for Table 4.9 (model,benchmark,benchmark_source; default: "
        "the thesis's four references, shipped with ltexp)",
    )


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "train": TrainConfig,
    "runtime": RuntimeConfig,
    "evaluate": EvaluateConfig,
    "study": StudyConfig,
    "report": ReportConfig,
    "tune": TuneConfig,
    "decouple": DecoupleConfig,
}
# The commands that take a section's fields (a field may name its own).
SECTION_COMMANDS: dict[str, tuple[str, ...]] = {
    "data": ("prepare-data", "train", "main", "tune"),
    "datasets": ("prepare-data", "train", "main", "tune"),
    "train": ("train", "main", "tune"),
    "losses": ("train", "main", "tune"),
    "runtime": ("train", "evaluate", "main", "tune", "decouple"),
    "evaluate": ("train", "evaluate", "main", "decouple"),
    "study": ("main",),
    "report": ("aggregate", "main"),
    "tune": ("tune",),
    "decouple": ("train", "decouple", "main"),
}


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of one command (immutable: derive with ``replace``)."""

    experiment: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    losses: dict[str, dict[str, float]] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    decouple: DecoupleConfig = field(default_factory=DecoupleConfig)
    preset: str = DEFAULT_PRESET

    def loss_hparams(self, loss: str | None = None) -> dict[str, float]:
        """Keyword arguments for ``build_loss(loss, ...)`` (DRW settings included)."""
        hparams = dict(self.losses.get(loss or self.train.loss, {}))
        if self.train.drw_epoch is not None:
            hparams["drw_epoch"] = self.train.drw_epoch
            hparams["drw_beta"] = self.train.drw_beta
        return hparams

    def dataset_options(self, dataset: str | None = None) -> dict[str, Any]:
        """Keyword arguments of the dataset's loader: the options its registry entry declares,
        and the ``data`` keys it shares with its kind (``storage_size`` for image files)."""
        from ltexp.data import DATASETS

        name = dataset or self.data.dataset
        spec = DATASETS.get(name)
        shared = {k: getattr(self.data, k) for k in (spec.settings if spec else ())}
        return {**shared, **self.datasets.get(name, {})}

    def replace(self, **flat: Any) -> Config:
        """A copy with flat keys changed (``cfg.replace(model="vit_b16", seed=1)``), checked."""
        return apply_overrides(self, flat)

    def to_dict(self, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Plain nested dict (what ``config.yaml`` holds); ``sections`` limits it.

        Dataset options are written flat under ``data`` (``synthetic_classes``), as presets
        give them.
        """
        out: dict[str, Any] = {"preset": self.preset, "experiment": self.experiment}
        for name in SECTIONS:
            if sections is None or name in sections:
                out[name] = _plain(dataclasses.asdict(getattr(self, name)))
        if "data" in out:
            for spec in dataset_fields():
                out["data"][spec.key] = self.datasets.get(spec.owner, {}).get(
                    spec.name, spec.default
                )
        if sections is None or "losses" in sections:
            out["losses"] = {k: dict(v) for k, v in self.losses.items()}
        return out

    def flat(self, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Flat ``{key: value}`` view, the names used for MLflow params and CLI options."""
        nested = self.to_dict(sections)
        out: dict[str, Any] = {"preset": nested["preset"], "experiment": nested["experiment"]}
        keys = {(f.section, f.name): f.key for f in all_fields().values()}
        for name in SECTIONS:
            out.update({keys.get((name, k), k): v for k, v in nested.get(name, {}).items()})
        for loss, hp in nested.get("losses", {}).items():
            out.update({f"{loss}_{k}": v for k, v in hp.items()})
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Field introspection: one table of every flat key, used by the YAML loader, the CLI, the hashes.


@dataclass(frozen=True)
class FieldSpec:
    """One configurable value: where it lives, its type, its checks, its help, what it is."""

    key: str
    section: str
    name: str
    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    runtime: bool = False
    registry: str = ""
    commands: tuple[str, ...] = ()
    also_under: str = ""
    owner: str = ""  # the loss or dataset a registry-declared field belongs to

    def help_text(self) -> str:
        """The help, with the registry's names when the field takes one."""
        if not self.registry:
            return self.help
        return f"{self.help} ({', '.join(registry_names(self.registry))})"


def registry_names(registry: str) -> list[str]:
    """The names a registry holds (``models`` adds the ``timm:<name>`` form)."""
    if registry == "models":
        from ltexp.models import list_models

        return [*list_models(), "timm:<name>"]
    if registry == "losses":
        from ltexp.losses import list_losses

        return list_losses()
    if registry == "datasets":
        from ltexp.data import list_datasets

        return list_datasets()
    if registry == "profiles":
        from ltexp.data import PROFILES

        return list(PROFILES)
    if registry == "samplers":
        from ltexp.data.samplers import SAMPLERS

        return list(SAMPLERS)
    if registry == "mixings":
        from ltexp.training.mixing import MIXINGS

        return list(MIXINGS)
    raise ValueError(f"unknown registry {registry!r}")  # pragma: no cover - a bug here


def section_fields(section: str) -> list[FieldSpec]:
    """The fields of one dataclass section, as :class:`FieldSpec`."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        m = f.metadata
        specs.append(
            FieldSpec(
                m.get("key") or f.name,
                section,
                f.name,
                hints[f.name],
                default,
                m.get("help", ""),
                m.get("choices", ()),
                m.get("low"),
                m.get("low_open", False),
                m.get("high"),
                m.get("high_open", False),
                m.get("runtime", False),
                m.get("registry", ""),
                m.get("commands") or SECTION_COMMANDS[section],
                m.get("also_under", ""),
            )
        )
    return specs


def loss_fields() -> list[FieldSpec]:
    """``<loss>_<hparam>`` fields, generated from the loss registry's documented defaults."""
    from ltexp.losses import LOSSES

    return [
        FieldSpec(
            f"{loss}_{hp.name}",
            "losses",
            hp.name,
            float,
            hp.default,
            f"{spec.display_name}: {hp.help}",
            (),
            hp.low,
            hp.low_open,
            hp.high,
            commands=SECTION_COMMANDS["losses"],
            owner=loss,
        )
        for loss, spec in LOSSES.items()
        for hp in spec.hparams
    ]


def dataset_fields() -> list[FieldSpec]:
    """The option fields of every registered dataset (``synthetic_classes``, …)."""
    from ltexp.data import DATASETS

    return [
        FieldSpec(
            opt.config_key(name),
            "datasets",
            opt.name,
            opt.type,
            opt.default,
            f"{name}: {opt.help}",
            (),
            opt.low,
            False,
            opt.high,
            commands=SECTION_COMMANDS["datasets"],
            owner=name,
        )
        for name, spec in DATASETS.items()
        for opt in spec.options
    ]


def all_fields() -> dict[str, FieldSpec]:
    """Every flat key of the configuration."""
    out: dict[str, FieldSpec] = {}
    for section in SECTIONS:
        for spec in section_fields(section):
            if spec.key in out:  # every value has one flat name (--key, -P key=…)
                raise ValueError(f"config key {spec.key!r} is declared twice")  # pragma: no cover
            out[spec.key] = spec
    for spec in [*loss_fields(), *dataset_fields()]:
        if spec.key in out:  # a registry entry may not shadow a config key
            raise ValueError(f"config key {spec.key!r} is declared twice")  # pragma: no cover
        out[spec.key] = spec
    return out


def command_fields(command: str) -> list[FieldSpec]:
    """The fields a command takes (its options)."""
    return [f for f in all_fields().values() if command in f.commands]


def runtime_keys() -> frozenset[str]:
    """Flat keys that only change how a run executes (left out of every identity hash)."""
    return frozenset(k for k, f in all_fields().items() if f.runtime)


# --------------------------------------------------------------------------------------------
# Parsing values (YAML values and command-line strings share one converter).

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def convert(spec: FieldSpec, value: Any) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the field's type and check its range."""
    try:
        out = _convert_type(spec.type, value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{spec.key}: {e}") from None
    _check_range(spec, out)
    return out


def _convert_type(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        inner = next(a for a in args if a is not type(None))
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        return _convert_type(inner, value)
    if origin is list:
        items = _split_list(value)
        return [_convert_type(args[0], v) for v in items]
    if origin is tuple:
        items = _split_list(value)
        if len(items) != len(args):
            raise ValueError(f"expected {len(args)} comma-separated values, got {value!r}")
        return tuple(_convert_type(a, v) for a, v in zip(args, items, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if isinstance(value, int | float):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        else:
            raise ValueError(f"expected a number, got {value!r}")
        if out != out or out in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite number, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r}")  # pragma: no cover - a bug in this module


def _split_list(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [value]
    raise ValueError(f"expected a list or comma-separated values, got {value!r}")


def _check_range(spec: FieldSpec, value: Any) -> None:
    values = value if isinstance(value, list | tuple) else [value]
    for v in values:
        if v is None:
            continue
        if spec.choices and v not in spec.choices:
            raise unknown_name_error(f"{spec.key} value", v, spec.choices)
        if isinstance(v, int | float) and not isinstance(v, bool):
            if spec.low is not None and (v < spec.low or (spec.low_open and v == spec.low)):
                op = ">" if spec.low_open else ">="
                raise ConfigError(f"{spec.key} must be {op} {spec.low:g}, got {v!r}")
            if spec.high is not None and (v > spec.high or (spec.high_open and v == spec.high)):
                op = "<" if spec.high_open else "<="
                raise ConfigError(f"{spec.key} must be {op} {spec.high:g}, got {v!r}")


# --------------------------------------------------------------------------------------------
# Loading presets and applying overrides.


def preset_path(preset: str) -> Path:
    """Path of a preset: a YAML file path, or a name in ``configs/``."""
    candidate = Path(preset).expanduser()
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"config file {preset!r} does not exist")
        return candidate
    valid = list_presets()
    for folder in (Path.cwd() / "configs", PRESET_DIR):
        path = folder / f"{preset}.yaml"
        if path.is_file():
            return path
    raise unknown_name_error("preset", preset, valid)


def list_presets() -> list[str]:
    """Names of the presets shipped in ``configs/``."""
    names = {
        p.stem
        for folder in (Path.cwd() / "configs", PRESET_DIR)
        if folder.is_dir()
        for p in folder.glob("*.yaml")
    }
    return sorted(names)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``, but a key given twice in one mapping is an error, not "last wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` (tags that build objects are refused)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {str(path)!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config {str(path)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config {str(path)!r} is not valid YAML: {first}") from None
    except RecursionError:
        raise ConfigError(
            f"config {str(path)!r} is nested too deeply to be a config (sections hold keys)"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config {str(path)!r} must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def yaml_to_overrides(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Flatten a nested YAML mapping to ``{flat_key: value}``, rejecting unknown keys."""
    out: dict[str, Any] = {}
    valid_top = ["experiment", *SECTIONS, "losses"]
    fields = all_fields()
    for top, body in data.items():
        if not isinstance(top, str):
            raise ConfigError(f"{source}: section names must be strings, got {top!r}")
        if top == "experiment":
            out["experiment"] = body
            continue
        if top not in valid_top:
            raise ConfigError(
                f"{source}: unknown section {top!r}{did_you_mean(top, valid_top)}; "
                f"valid: {', '.join(valid_top)}"
            )
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(
                f"{source}: section {top!r} must be a mapping, got {type(body).__name__}"
            )
        if top == "losses":
            out.update(_loss_overrides(body, source))
            continue
        # a section's own fields by their name there, fields that moved and dataset options by
        # their flat key
        valid = {f.name: k for k, f in fields.items() if f.section == top}
        valid.update(
            {
                k: k
                for k, f in fields.items()
                if f.also_under == top or (top == "data" and f.section == "datasets")
            }
        )
        for key, value in body.items():
            if key not in valid:
                raise ConfigError(
                    f"{source}: unknown key {top}.{key}"
                    f"{did_you_mean(str(key), list(valid))}; valid: {', '.join(valid)}"
                )
            out[valid[key]] = value
    return out


def _loss_overrides(body: dict[str, Any], source: str) -> dict[str, Any]:
    from ltexp.losses import LOSSES

    out = {}
    for loss, hps in body.items():
        if loss not in LOSSES:
            raise ConfigError(
                f"{source}: unknown loss {loss!r} under losses"
                f"{did_you_mean(str(loss), list(LOSSES))}; "
                f"valid: {', '.join(LOSSES)}"
            )
        if not isinstance(hps, dict):
            raise ConfigError(f"{source}: losses.{loss} must be a mapping of hyper-parameters")
        valid = [hp.name for hp in LOSSES[loss].hparams]
        for name, value in hps.items():
            if name not in valid:
                raise ConfigError(
                    f"{source}: unknown key losses.{loss}.{name}"
                    f"{did_you_mean(str(name), valid)}; "
                    f"valid: {', '.join(valid) or '(none)'}"
                )
            out[f"{loss}_{name}"] = value
    return out


def check_experiment_name(value: Any) -> str:
    """An MLflow experiment name: text, not blank, one line (empty = the default)."""
    if not isinstance(value, str):
        raise ConfigError(f"experiment must be a string, got {value!r}")
    if value and not value.strip():
        raise ConfigError("experiment is blank; give a name, or leave it out for the default")
    if any(ord(c) < 32 for c in value) or len(value) > 250:
        raise ConfigError(f"experiment {value[:40]!r}… must be one line of at most 250 characters")
    return value.strip()


def default_config(preset: str = DEFAULT_PRESET) -> Config:
    """The dataclass defaults, with every registered loss's and dataset's own defaults."""
    from ltexp.data import DATASETS
    from ltexp.losses import LOSSES

    return Config(
        preset=preset,
        losses={name: {hp.name: hp.default for hp in s.hparams} for name, s in LOSSES.items()},
        datasets={name: {o.name: o.default for o in s.options} for name, s in DATASETS.items()},
    )


def apply_overrides(cfg: Config, values: dict[str, Any]) -> Config:
    """A new config: ``cfg`` with flat ``{key: value}`` pairs applied (strings are converted).

    Raises:
        ConfigError: an unknown key (with a did-you-mean), a wrong type, an out-of-range value.
    """
    fields = all_fields()
    sections: dict[str, dict[str, Any]] = {}
    losses = {k: dict(v) for k, v in cfg.losses.items()}
    datasets = {k: dict(v) for k, v in cfg.datasets.items()}
    top: dict[str, Any] = {}
    for key, value in values.items():
        if key == "experiment":
            top["experiment"] = check_experiment_name(value)
            continue
        if key == "preset":
            continue
        spec = fields.get(key)
        if spec is None:
            raise ConfigError(f"unknown option {key!r}{did_you_mean(key, list(fields))}")
        converted = convert(spec, value)
        if spec.section == "losses":
            losses.setdefault(spec.owner, {})[spec.name] = converted
        elif spec.section == "datasets":
            datasets.setdefault(spec.owner, {})[spec.name] = converted
        else:
            sections.setdefault(spec.section, {})[spec.name] = converted
    changed = {
        name: dataclasses.replace(getattr(cfg, name), **updates)
        for name, updates in sections.items()
    }
    return dataclasses.replace(cfg, **top, **changed, losses=losses, datasets=datasets)


def build_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Resolve a configuration: dataclass defaults, then the preset, then ``overrides``.

    Args:
        preset: preset name in ``configs/`` or a YAML path (default ``demo``).
        overrides: flat ``{key: value}`` pairs (CLI options); values may be strings.

    Raises:
        ConfigError: an unknown key (with the valid ones and a did-you-mean), a wrong type, an
            out-of-range value.
    """
    preset = preset or DEFAULT_PRESET
    path = preset_path(preset)
    values = yaml_to_overrides(read_yaml(path), f"config {str(path)!r}")
    values.update(overrides or {})
    return apply_overrides(default_config(preset), values)
