"""Studies planted without training: CIFAR-100's protocol manifest, and evaluate results with
predictions drawn from a known effect per loss over several seeds (the report's statistics and
claims are tested against what was planted)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ltexp.evaluation import binomial_interval
from ltexp.rehearsal import protocol_manifest
from ltexp.report.build import results_frame
from ltexp.report.correctness import COLUMN_SPLITS


def cifar_manifest() -> dict:
    """The manifest of CIFAR-100's protocol (:func:`ltexp.rehearsal.protocol_manifest`)."""
    return protocol_manifest("cifar100")


README_CLAIM = """\
claims:
  - id: bs-beats-ce-balanced
    text: Balanced Softmax beats Softmax in balanced accuracy on long-tailed training
    source: README example
    kind: better
    a: bs
    b: ce
    metric: balanced
    where: {train_split: lt}
"""


def _test_labels(manifest: dict) -> dict[str, np.ndarray]:
    """Labels of each test split, as many per class as the manifest says."""
    out = {}
    for split in ("test_balanced", "test_lt"):
        counts = np.zeros(100, dtype=int)  # per_class is by rank, most frequent class first
        counts[manifest["class_rank"]] = manifest["splits"][split]["per_class"]
        out[split] = np.repeat(np.arange(100), counts)
    return out


@dataclass
class PlantedStudy:
    """Evaluate results (records as aggregate gathers them) and their predictions by run id."""

    records: list[dict] = field(default_factory=list)
    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def frame(self):
        return results_frame(self.records)

    def load(self, run_id: str) -> dict[str, np.ndarray] | None:
        return self.predictions.get(run_id)


def plant(
    manifest: dict,
    effects: dict[tuple[str, str], float],
    seeds: tuple[int, ...],
    models: tuple[str, ...] = ("resnet50",),
    splits: tuple[str, ...] = ("lt",),
    rng_seed: int = 0,
    seed_sd: float = 0.03,
    group_effects: dict[tuple[str, str, str], float] | None = None,
) -> PlantedStudy:
    """Results of ``models × losses × splits × seeds``, each model right on an image with a
    probit probability: the image's ease (shared by every run), plus ``effects[(model, loss)]``
    (a latent shift; about 0.35 accuracy points per 0.01), plus ``group_effects[(model, loss,
    group)]`` on that group's classes, plus the seed's own shift and per-image noise."""
    rng = np.random.default_rng(rng_seed)
    labels = _test_labels(manifest)
    ease = {s: rng.normal(0.4, 1.5, len(lab)) for s, lab in labels.items()}
    group_of = np.empty(100, dtype=object)
    for group in ("head", "middle", "tail"):
        group_of[manifest["groups"][group]] = group
    study = PlantedStudy()
    losses = sorted({loss for _, loss in effects})
    for model, loss, split, seed in itertools.product(models, losses, splits, seeds):
        run_id = f"{model}-{loss}-{split}-s{seed}"
        pred, record = {}, {}
        model_shift = rng.normal(0, seed_sd)
        for test_split, lab in labels.items():
            latent = ease[test_split] + effects[(model, loss)] + model_shift
            for (m, lo, group), extra in (group_effects or {}).items():
                if (m, lo) == (model, loss):
                    latent = latent + extra * (group_of[lab] == group)
            right = latent + rng.normal(0, 0.9, len(lab)) > 0
            top5 = np.stack([np.where(right, lab, (lab + 1) % 100)] + [(lab + 2) % 100] * 4, 1)
            pred[f"{test_split}_labels"] = lab
            pred[f"{test_split}_top5"] = top5.astype(np.int32)
        for column, (test_split, group) in COLUMN_SPLITS.items():
            lab = pred[f"{test_split}_labels"]
            right = pred[f"{test_split}_top5"][:, 0] == lab
            if group is not None:
                right = right[np.isin(lab, manifest["groups"][group])]
            low, high = binomial_interval(int(right.sum()), len(right))
            record |= {column: right.mean(), f"{column}_ci_low": low, f"{column}_ci_high": high}
        study.records.append(
            {
                "run_id": run_id,
                "end_time": len(study.records),
                "dataset": "cifar100",
                "model": model,
                "loss": loss,
                "train_split": split,
                "seed": str(seed),
                **record,
            }
        )
        study.predictions[run_id] = pred
    return study
