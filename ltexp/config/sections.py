"""The configuration's sections: every option of every command, with its default and the reason
for it, and the introspection that turns them into one table of flat keys."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from ltexp.config.fields import STAGE2_METHODS, FieldSpec, _opt, convert, loss_key
from ltexp.config.grid import axes
from ltexp.config.grid import axis as axis_of
from ltexp.errors import ConfigError, did_you_mean

# The registries (ltexp.data, ltexp.losses) are imported where a value is checked against them:
# ltexp.losses imports torch (1.4 s, measured with python -X importtime), and the config serves
# ``ltexp --help`` and option errors, which answer in a tenth of a second without it.

DEMO_PRESET = "demo"  # the embedded digits, small models from scratch: runs on a CPU
PROTOCOL_PRESET = "thesis"  # the protocol: CIFAR-100, the four pretrained backbones
DEFAULT_PRESET = DEMO_PRESET


@dataclass(frozen=True)
class DataConfig:
    """Which data, and the split protocol built from it (docs/protocol.md, "Data")."""

    dataset: str = _opt("cifar100", "dataset name", registry="datasets")
    data_root: str = _opt(
        "~/.cache/ltexp",
        "folder the dataset files are read from / downloaded to",
        runtime=True,
        commands=("prepare-data", "train", "evaluate", "main", "tune", "decouple", "ensemble"),
    )
    download: bool = _opt(
        True,
        "download the dataset when its files are missing",
        runtime=True,
        commands=("prepare-data", "train", "evaluate", "main", "tune", "decouple", "ensemble"),
    )
    profile: str = _opt("exp", "imbalance profile of the long-tailed splits", registry="profiles")
    imbalance_ratio: float = _opt(
        100.0,
        "n_max / n_min of the long-tailed splits (thesis: 100)",
        low=1.0,
        high=10_000,
    )
    pareto_alpha: float = _opt(
        6.0,
        "shape of the pareto profile (ImageNet-LT, Liu et al. 2019: 6)",
        low=0.0,
        low_open=True,
        high=100.0,
    )
    n_max_train: int | None = _opt(
        None,
        "images per class in train_balanced (default: the dataset's protocol, CIFAR-100: 450)",
        low=1,
        high=10_000_000,
    )
    n_max_test: int | None = _opt(
        None, "images per class in test_balanced (CIFAR-100: 50)", low=1, high=10_000_000
    )
    class_order: str = _opt(
        "label",
        "frequency rank of the classes: label (class 0 most "
        "frequent), random (seeded), or a comma list of labels",
    )
    split_seed: int = _opt(42, "seed of every split choice (thesis: 42)", low=0, high=2**32 - 1)
    max_per_class: int | None = _opt(
        None,
        "a rehearsal on a CPU: at most N images per class in every split, cut after the "
        "protocol's split (recorded, and said in the report's first line; default: all)",
        low=1,
        high=100_000,
        added="0.3",
    )
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
        high=4096,
    )
    skip_bad_images: bool = _opt(
        False,
        "image files: skip an unreadable image (counted, listed in skipped_images.txt) instead "
        "of stopping at it",
    )
    max_image_pixels: int = _opt(
        100_000_000,
        "image files: the largest image decoded, in pixels (its header is read first; a file "
        "declaring more is refused, or skipped with skip_bad_images: decompression bombs)",
        low=1,
        high=1_000_000_000,
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
    seed: int = _opt(42, "seed of Python, NumPy and torch (thesis: 42)", low=0, high=2**32 - 1)
    pretrained: str = _opt(
        "true", "true (library weights), false (random init) or a path to a local state dict"
    )
    head: str = _opt(
        "linear",
        "classifier head: linear (the protocol's 100-way layer, for every loss) or cosine (the "
        "normalised classifier Cao et al. 2019 paired LDAM with)",
        choices=("linear", "cosine"),
        method=True,
    )
    image_size: int | None = _opt(
        None,
        "input side in pixels (default: the model's, 224 for the pretrained backbones)",
        low=8,
        high=4096,
    )
    finetune: str = _opt(
        "full",
        "how much of the backbone trains: full (everything: the protocol), linear (the "
        "classifier on a frozen backbone), freeze:<k> (the first k stages frozen), gradual "
        "(unfrozen from the top, one stage every gradual_epochs), bitfit (biases and norms), "
        "lora (low-rank updates through peft, merged at export); ltexp/models/finetune.py",
        registry="finetunes",
        added="0.2",
    )
    gradual_epochs: int = _opt(
        1,
        "finetune=gradual: epochs between two unfreezings (ULMFiT, Howard and Ruder 2018: 1)",
        low=1,
        method=True,
        added="0.2",
        applies_when=("finetune", "gradual"),
        high=100_000,
    )
    lora_rank: int = _opt(
        8,
        "finetune=lora: rank r of the updates (Hu et al. 2022 find 4-8 enough)",
        low=1,
        method=True,
        added="0.2",
        applies_when=("finetune", "lora"),
        high=1024,
    )
    lora_alpha: float = _opt(
        16.0,
        "finetune=lora: α; the update is scaled by α/r (2 at the default rank, as peft's "
        "examples set it)",
        low=0.0,
        low_open=True,
        method=True,
        added="0.2",
        applies_when=("finetune", "lora"),
        high=10_000.0,
    )
    llrd: float = _opt(
        1.0,
        "layer-wise learning-rate decay: stage i of n trains at lr·llrd^(n−i), the classifier at "
        "lr (BEiT, Bao et al. 2022: 0.65 for ViT-B; 1 = off)",
        low=0.0,
        low_open=True,
        high=1.0,
        method=True,
        added="0.2",
    )
    normalize: str = _opt(
        "cifar",
        "input normalisation: cifar (the protocol's CIFAR statistics, for every model) or "
        "weights (the pretrained weights' own mean and std, from the library's metadata)",
        choices=("cifar", "weights"),
        added="0.2",
    )
    optimizer: str = _opt("adam", "optimizer", choices=("adam", "adamw", "sgd"))
    # above 10 no optimiser here trains (large-batch SGD recipes stay below 2): a typo, refused
    # before a run exists rather than a run that diverges
    lr: float = _opt(1e-3, "learning rate (thesis: Adam 1e-3)", low=0.0, low_open=True, high=10.0)
    betas: tuple[float, float] = _opt(
        (0.9, 0.999), "Adam betas (thesis: 0.9,0.999)", low=0.0, high=1.0, high_open=True
    )
    eps: float = _opt(1e-8, "Adam epsilon (thesis: 1e-8)", low=0.0, low_open=True, high=1.0)
    weight_decay: float = _opt(0.0, "weight decay (thesis: none)", low=0.0, high=10.0)
    decay_exempt: bool = _opt(
        False,
        "keep biases, normalisation weights and a ViT's cls_token/pos_embed out of weight decay, "
        "as BEiT and timm do (matters only with weight_decay > 0)",
        method=True,
        added="0.3",
    )
    momentum: float = _opt(0.9, "SGD momentum (only with optimizer=sgd)", low=0.0, high=1.0)
    batch_size: int = _opt(128, "training batch size (thesis: 128)", low=1, high=65_536)
    epochs: int = _opt(90, "training epochs (thesis: 90)", low=1, high=100_000)
    scheduler: str = _opt("step", "learning-rate schedule", choices=("step", "cosine", "none"))
    warmup_epochs: int = _opt(
        0,
        "epochs of linear learning-rate warmup before the schedule (thesis: none)",
        low=0,
        added="0.2",
        high=100_000,
    )
    label_smoothing: float = _opt(
        0.0,
        "label smoothing ε of the softmax cross-entropy losses (ce, wce, cb, cb_raw; Szegedy et "
        "al. 2016; thesis: none)",
        low=0.0,
        high=1.0,
        high_open=True,
        method=True,
        added="0.2",
    )
    step_size: int = _opt(30, "StepLR period in epochs (thesis: 30)", low=1, high=100_000)
    lr_gamma: float = _opt(0.1, "StepLR factor (thesis: 0.1)", low=0.0, low_open=True, high=1.0)
    drw_epoch: int | None = _opt(
        None,
        "deferred re-weighting: class weights switch on from this "
        "epoch (Cao et al. 2019 use 160 of 200)",
        low=0,
        method=True,
        high=100_000,
    )
    drw_beta: float = _opt(
        0.9999,
        "beta of the class-balanced DRW weights (Cao et al. 2019)",
        low=0.0,
        high=1.0,
        high_open=True,
        method=True,
    )
    drw_reduction: str = _opt(
        "weights",
        "how DRW's weighted loss averages over a batch: weights = by the sum of the batch's "
        "class weights, as Cao et al.'s code (F.cross_entropy(weight=...)); batch = by the batch "
        "size, ltexp's form before 0.3 (about 5x smaller on CIFAR-100-LT)",
        choices=("weights", "batch"),
        method=True,
        added="0.3",
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
    mixing: str = _opt("none", "batch mixing (ltexp/data/mixing.py)", registry="mixings")
    mixing_alpha: float = _opt(
        1.0,
        "α of the Beta(α, α) mixing factor (mixup, CutMix, Remix papers: 1)",
        low=0.0,
        low_open=True,
        method=True,
        high=100.0,
    )
    mixing_prob: float | None = _opt(
        None,
        "probability that a batch is mixed (default: the paper's: CutMix 0.5 as Yun et al. 2019 "
        "train CIFAR, mixup and Remix every batch)",
        low=0.0,
        high=1.0,
        method=True,
    )
    remix_kappa: float = _opt(
        3.0,
        "Remix κ: the class-size ratio that favours the rarer class (Chou et al. 2020: 3)",
        low=1.0,
        method=True,
        high=1000.0,
    )
    remix_tau: float = _opt(
        0.5,
        "Remix τ: the mixing factor below which the rarer label wins (Chou et al. 2020: 0.5)",
        low=0.0,
        high=1.0,
        method=True,
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
        commands=("train", "main", "tune", "decouple", "ensemble"),
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
        None,
        "torch CPU threads (default: torch's)",
        low=1,
        runtime=True,
        also_under="train",
        high=1024,
    )
    data_on_device_gb: float | None = _opt(
        None,
        "GiB of device memory a training split may take; a larger one is streamed from pinned "
        "host memory (default: half the GPU's free memory; 0 always streams)",
        low=0.0,
        runtime=True,
        commands=("train", "main", "tune", "decouple"),
        high=100_000.0,
    )
    eval_batch_size: int = _opt(
        512,
        "validation/test batch size: inference needs no activations "
        "for backward, so larger batches are faster and exact",
        low=1,
        runtime=True,
        also_under="train",
        high=65_536,
    )
    system_metrics: bool | None = _opt(
        None,
        "log MLflow system metrics (CPU, memory, GPU; default: when training on a GPU, where "
        "its utilisation says something; on a CPU they are a thread and four log lines a cell)",
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
        high=100.0,
    )
    temperature_scaling: bool = _opt(
        False,
        "scale the logits by a temperature fitted on the validation set before testing (Guo et "
        "al. 2017): the confidences and their calibration error change, the predictions do not; "
        "the report keeps such evaluations out of its tables, as a post-hoc adjustment",
    )
    bootstrap_samples: int = _opt(
        1000,
        "unused since the report's intervals became analytic (ltexp/statistics.py); accepted, "
        "and logged by evaluate, so that existing commands and presets still run",
        low=10,
        high=100_000,
    )
    bootstrap_seed: int = _opt(0, "unused, as bootstrap_samples", low=0, high=2**32 - 1)


@dataclass(frozen=True)
class StudyConfig:
    """How the study's cells run. The grid itself (``models``, ``losses``, …) is one option per
    axis of :mod:`ltexp.config.grid`, held in :attr:`Config.grid`."""

    workers: int = _opt(
        1,
        "cells run at once (one per GPU when there are GPUs)",
        low=1,
        runtime=True,
        high=1024,
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
    trials: int = _opt(
        20, "trials of the search (finished or pruned), over all workers", low=1, high=1_000_000
    )
    timeout: float | None = _opt(
        None,
        "stop starting trials after this many seconds (default: no limit)",
        low=0.0,
        low_open=True,
        high=1e7,
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
    tune_seed: int = _opt(0, "seed of the sampler", low=0, high=2**32 - 1)
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


# epochs of the methods that train, as Kang et al.'s released configs set them
# (facebookresearch/classifier-balancing, config/*/cls_crt.yaml and cls_lws.yaml)
STAGE2_EPOCHS = {"crt": 10, "lws": 5}


@dataclass(frozen=True)
class DecoupleConfig:
    """The second stage of Kang et al. 2020 (``ltexp decouple``, ltexp/training/decoupling.py).

    Defaults are the paper's: class-balanced classifier re-training with a cosine schedule for
    10 epochs (cRT) or 5 (LWS), as their released configs set them; τ chosen on the validation
    set.
    """

    stage2: str = _opt(
        "none",
        "decoupling method: none, crt (re-train the classifier), tau_norm (rescale its rows) "
        "or lws (learn one scale per class)",
        choices=("none", *STAGE2_METHODS),
        commands=("train", "decouple"),  # a study's second stages are study_stage2
    )
    stage2_epochs: int | None = _opt(
        None,
        "epochs of cRT and LWS (default: Kang et al. 2020's configs, cRT 10 and LWS 5)",
        low=1,
        method=True,
        high=100_000,
    )
    stage2_lr: float | None = _opt(
        None,
        "learning rate of cRT and LWS (default: the stage-1 run's lr), cosine-annealed",
        low=0.0,
        low_open=True,
        method=True,
        high=10.0,
    )
    stage2_tau: float | None = _opt(
        None,
        "τ of tau_norm (default: the best on the validation set of 0, 0.1, …, 2 — Kang et al.'s "
        "search — or of 0, 0.1, …, 1 with stage2_tau_form=keep_bias)",
        low=0.0,
        high=2.0,
        method=True,
    )
    stage2_tau_form: str = _opt(
        "kang",
        "tau_norm's form: kang (the normalised scores drop the classifier bias, τ searched over "
        "0-2: Kang et al. 2020 and their code) or keep_bias (the bias kept, τ over 0-1: ltexp's "
        "form before)",
        choices=("kang", "keep_bias"),
        method=True,
    )

    def epochs(self, method: str) -> int:
        """The epochs of ``method`` (crt or lws): the option, else its paper's."""
        return self.stage2_epochs or STAGE2_EPOCHS[method]


@dataclass(frozen=True)
class EnsembleConfig:
    """Ensembles of registered models (``ltexp ensemble``, ltexp/models/ensemble.py)."""

    members: list[str] = _opt(
        None,
        "the registered models to ensemble (models:/<name>@champion, models:/<name>/<version>); "
        "--model-uri repeated, or comma-separated",
        factory=list,
        commands=("ensemble",),
    )
    combine: str = _opt(
        "logits",
        "how the members' outputs are averaged: logits (the output stays logits) or probs (the "
        "log of the mean probability)",
        choices=("logits", "probs"),
        commands=("ensemble", "main"),
    )
    ensemble_top_k: int = _opt(
        0,
        "after the grid, ensemble the k losses with the best validation top-1 of each backbone, "
        "training set and variant, and evaluate and report each ensemble (0: none)",
        low=0,
        commands=("main",),
        high=64,
    )


@dataclass(frozen=True)
class ReportConfig:
    """The aggregate step: tables and figures from the tracking server."""

    output_dir: str = _opt(
        "", "where the report is written (default reports/<experiment>/)", runtime=True
    )
    report_dataset: str = _opt("", "dataset to report when an experiment holds several")
    variant: str = _opt(
        "",
        "the variant of each cell the thesis tables hold when an experiment has several: a "
        "label of the report's variants table (tuned, head=cosine, class_balanced, …; default: "
        "the plain one, or the cells the study ran)",
    )
    percent: bool = _opt(
        False, "print percentages with two decimals, as the thesis text does (CSVs stay fractions)"
    )
    intervals: bool = _opt(
        True,
        "show each cell's 95% interval in the results tables (one seed: Clopper-Pearson over "
        "the test images of that one model; several: over seeds and test images); false: the "
        "mean, ± the seeds' std with several",
    )
    references: str = _opt(
        "",
        "CSV of published results: Table 4.9's references (model,benchmark,benchmark_source) or "
        "a paper's per-cell results for the reproduction table (table,model,loss,train_split,"
        "balanced,long_tailed,head,middle,tail,source); default: the thesis's, shipped with ltexp",
    )
    claims: str = _opt(
        "",
        "YAML file(s) of a paper's conclusions to check, comma-separated ('thesis': the thesis's, "
        "ltexp/report/claims/thesis.yaml; grammar in docs/claims.md); default: the thesis's for "
        "a CIFAR-100 protocol study, none otherwise",
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
    "ensemble": EnsembleConfig,
}
# The commands that take a section's fields (a field may name its own).
SECTION_COMMANDS: dict[str, tuple[str, ...]] = {
    "data": ("prepare-data", "train", "main", "tune"),
    "datasets": ("prepare-data", "train", "main", "tune"),
    "train": ("train", "main", "tune"),
    "losses": ("train", "main", "tune"),
    "runtime": ("train", "evaluate", "main", "tune", "decouple", "ensemble"),
    "evaluate": ("train", "evaluate", "main", "decouple"),
    "study": ("main",),
    "report": ("aggregate", "main"),
    "tune": ("tune",),
    "decouple": ("train", "decouple", "main"),
    "ensemble": ("ensemble", "main"),
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
    grid: dict[str, list[Any]] = field(default_factory=dict)  # axis key -> the grid's values
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    decouple: DecoupleConfig = field(default_factory=DecoupleConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    preset: str = DEFAULT_PRESET

    def loss_hparams(self, loss: str | None = None) -> dict[str, float]:
        """Keyword arguments for ``build_loss(loss, ...)`` (DRW and label smoothing included)."""
        hparams = dict(self.losses.get(loss or self.train.loss, {}))
        if self.train.drw_epoch is not None:
            hparams["drw_epoch"] = self.train.drw_epoch
            hparams["drw_beta"] = self.train.drw_beta
            hparams["drw_reduction"] = self.train.drw_reduction
        if self.train.label_smoothing:
            hparams["label_smoothing"] = self.train.label_smoothing
        return hparams

    def loss_settings(self, loss: str | None = None) -> dict[str, float]:
        """The loss's own hyper-parameters by flat key (``{"focal_gamma": 2.0}``), DRW apart."""
        name = loss or self.train.loss
        return {loss_key(name, k): v for k, v in self.losses.get(name, {}).items()}

    def dataset_options(self, dataset: str | None = None) -> dict[str, Any]:
        """Keyword arguments of the dataset's loader: the options its registry entry declares,
        and the ``data`` keys it shares with its kind (``storage_size`` for image files)."""
        from ltexp.data import DATASETS

        name = dataset or self.data.dataset
        spec = DATASETS.get(name)
        shared = {k: getattr(self.data, k) for k in (spec.settings if spec else ())}
        return {**shared, **self.datasets.get(name, {})}

    def grid_values(self, axis: str) -> list[Any]:
        """The grid's values of an axis (``grid_values("sampler")``: the ``samplers`` option);
        an axis registered after this config was built has its default values."""
        return list(self.grid.get(axis, axis_of(axis).default))

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
        if "study" in out:  # the grid first, by the names presets give it under study:
            grid = {f.name: self.grid_values(f.owner) for f in grid_fields()}
            out["study"] = {**_plain(grid), **out["study"]}
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
            out.update({loss_key(loss, k): v for k, v in hp.items()})
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def section_fields(section: str) -> list[FieldSpec]:
    """The fields of one dataclass section, as :class:`FieldSpec`."""
    return list(_section_fields(section))


@functools.cache
def _section_fields(section: str) -> tuple[FieldSpec, ...]:
    # read once per process: resolving the annotations (typing.get_type_hints) is most of what
    # building a config costs, and the sections are fixed dataclasses
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
                m.get("method", False),
                added=m.get("added", ""),
                applies_when=m.get("applies_when", ("", "")),
            )
        )
    return tuple(specs)


def loss_fields() -> list[FieldSpec]:
    """``<loss>_<hparam>`` fields, generated from the loss registry's documented defaults."""
    from ltexp.losses import LOSSES

    return [
        FieldSpec(
            loss_key(loss, hp.name),
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


def grid_fields() -> list[FieldSpec]:
    """The study's grid options, one per axis of :mod:`ltexp.config.grid` (``models``,
    ``samplers``, ``study_mixing``, …). Under ``study:`` in YAML each is its grid key without
    ``study_``, which keeps the flat key (``study_mixing``) apart from the cell's own option
    (``mixing``)."""
    # an axis's values have the range of the cell's own option (seeds: seed's)
    own = {spec.key: spec for section in SECTIONS for spec in section_fields(section)}
    return [
        FieldSpec(
            a.grid_key,
            "study",
            a.grid_key.removeprefix("study_"),
            list[a.item_type],
            list(a.default),
            a.help,
            low=own[a.key].low if a.key in own else None,
            high=own[a.key].high if a.key in own else None,
            registry=a.registry,
            commands=SECTION_COMMANDS["study"],
            owner=a.key,
        )
        for a in axes()
    ]


def all_fields() -> dict[str, FieldSpec]:
    """Every flat key of the configuration."""
    out: dict[str, FieldSpec] = {}
    for section in SECTIONS:
        for spec in section_fields(section):
            if spec.key in out:  # every value has one flat name (--key, -P key=…)
                raise ValueError(f"config key {spec.key!r} is declared twice")  # pragma: no cover
            out[spec.key] = spec
    for spec in [*grid_fields(), *loss_fields(), *dataset_fields()]:
        if spec.key in out:  # a registry entry may not shadow a config key
            raise ValueError(f"config key {spec.key!r} is declared twice")  # pragma: no cover
        out[spec.key] = spec
    return out


def command_fields(command: str) -> list[FieldSpec]:
    """The fields a command takes (its options)."""
    return [f for f in all_fields().values() if command in f.commands]


@functools.cache
def added_keys() -> dict[str, Any]:
    """Options added after runs were recorded (``added=``), with their defaults: an identity
    leaves each out while it is at that default. (Sections are fixed dataclasses, so this is
    read once: every identity asks it.)"""
    return {
        f.metadata.get("key") or f.name: _field_default(f)
        for cls in SECTIONS.values()
        for f in dataclasses.fields(cls)
        if f.metadata.get("added")
    }


@functools.cache
def conditional_keys() -> dict[str, tuple[str, str]]:
    """Options that matter only under another option's value (``applies_when=``)."""
    return {
        f.metadata.get("key") or f.name: f.metadata["applies_when"]
        for cls in SECTIONS.values()
        for f in dataclasses.fields(cls)
        if f.metadata.get("applies_when", ("", ""))[0]
    }


def _field_default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def runtime_keys() -> frozenset[str]:
    """Flat keys that only change how a run executes (left out of every identity hash)."""
    return frozenset(k for k, f in all_fields().items() if f.runtime)


def check_experiment_name(value: Any) -> str:
    """An MLflow experiment name: text, not blank, one line (empty = the default)."""
    if not isinstance(value, str):
        raise ConfigError(f"experiment must be a string, got {value!r}")
    if value and not value.strip():
        raise ConfigError("experiment is blank; give a name, or leave it out for the default")
    if any(ord(c) < 32 for c in value) or len(value) > 250:
        raise ConfigError(f"experiment {value[:40]!r}… must be one line of at most 250 characters")
    return value.strip()


def apply_overrides(cfg: Config, values: dict[str, Any]) -> Config:
    """A new config: ``cfg`` with flat ``{key: value}`` pairs applied (strings are converted).

    Raises:
        ConfigError: an unknown key (with a did-you-mean), a wrong type, an out-of-range value.
    """
    fields = all_fields()
    sections: dict[str, dict[str, Any]] = {}
    losses = {k: dict(v) for k, v in cfg.losses.items()}
    datasets = {k: dict(v) for k, v in cfg.datasets.items()}
    grid = {k: list(v) for k, v in cfg.grid.items()}
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
        elif spec.section == "study" and spec.owner:  # a grid option: the axis's values
            grid[spec.owner] = converted
        else:
            sections.setdefault(spec.section, {})[spec.name] = converted
    changed = {
        name: dataclasses.replace(getattr(cfg, name), **updates)
        for name, updates in sections.items()
    }
    return dataclasses.replace(cfg, **top, **changed, losses=losses, datasets=datasets, grid=grid)
