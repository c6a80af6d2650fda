"""Which test images each evaluate run got right: what the report's intervals are computed from.

An evaluate run's predictions artifact holds its test splits' labels, top-5 classes and logits
(about 2.7 MB for CIFAR-100's 12,000 test images). The intervals over seeds and the paired
comparisons need only whether each image's top-1 is right, so each run is read once and kept as
bits (1.5 kB for 12,000 images); the labels, the same for every run of a test set, are kept once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from ltexp.report.model import Predictions
from ltexp.statistics import accuracy_interval

TEST_SPLITS = ("test_balanced", "test_lt")
# predictions read at once from the store (downloads wait on the network, not the CPU)
PREFETCH_WORKERS = 8
# the report's columns: (test split, class group or None for every image); head/middle/tail are
# measured on the manifest's group split (a set long-tailed as given: its balanced test set)
COLUMN_SPLITS = {
    "balanced": ("test_balanced", None),
    "long_tailed": ("test_lt", None),
    "head": ("test_lt", "head"),
    "middle": ("test_lt", "middle"),
    "tail": ("test_lt", "tail"),
}


class Correctness:
    """Each run's top-1 correctness per test split, read from its predictions once, as bits."""

    def __init__(self, predictions: Predictions, manifest: dict | None = None) -> None:
        self.predictions = predictions
        self.groups = (
            {g: list(manifest["groups"][g]) for g in ("head", "middle", "tail")} if manifest else {}
        )
        self.group_split = (manifest or {}).get("group_split", "test_lt")
        self._runs: dict[str, dict[str, tuple[bytes, np.ndarray, int]] | None] = {}
        self._labels: dict[bytes, np.ndarray] = {}

    def prefetch(self, run_ids: Iterable[str], workers: int = PREFETCH_WORKERS) -> None:
        """Read these runs' predictions, ``workers`` at a time: a remote store's latency is
        overlapped, and each run is kept as bits as soon as it arrives (its 2.7 MB of
        predictions are not held)."""
        todo = [r for r in dict.fromkeys(run_ids) if r not in self._runs]
        if not todo:
            return
        with ThreadPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            for run_id, reduced in zip(todo, pool.map(self._reduce, todo), strict=True):
                self._keep(run_id, reduced)

    def _reduce(self, run_id: str) -> dict[str, tuple[bytes, np.ndarray, np.ndarray, int]] | None:
        """One run's labels and right/wrong bits per test split (None: no usable predictions)."""
        pred = self.predictions(run_id)
        if pred is None:
            return None
        out = {}
        try:
            for split in TEST_SPLITS:
                labels = np.asarray(pred[f"{split}_labels"])
                top1 = np.asarray(pred[f"{split}_top5"])
                top1 = top1[:, 0] if top1.ndim == 2 and top1.shape[1] else top1
                if top1.shape != labels.shape:
                    raise ValueError("labels and predictions differ in length")
                key = hashlib.sha256(labels.tobytes()).digest()
                out[split] = (key, labels, np.packbits(top1 == labels), len(labels))
        except (KeyError, ValueError, IndexError):
            return None  # a truncated or foreign artifact: counted as unreadable
        return out

    def _keep(
        self, run_id: str, reduced: dict[str, tuple[bytes, np.ndarray, np.ndarray, int]] | None
    ) -> None:
        kept = None
        if reduced is not None:
            kept = {}
            for split, (key, labels, bits, n) in reduced.items():
                self._labels.setdefault(key, labels.copy())  # one copy per test set
                kept[split] = (key, bits, n)
        self._runs[run_id] = kept

    def _read(self, run_id: str) -> dict[str, tuple[bytes, np.ndarray, int]] | None:
        if run_id not in self._runs:
            self._keep(run_id, self._reduce(run_id))
        return self._runs[run_id]

    def has(self, run_id: str) -> bool:
        """The run has readable predictions."""
        return self._read(run_id) is not None

    def unreadable(self) -> int:
        """Runs read that had no readable predictions."""
        return sum(kept is None for kept in self._runs.values())

    def split(self, run_id: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, correct)`` of a readable run on a test split."""
        kept = self._read(run_id)
        assert kept is not None, run_id
        key, bits, n = kept[split]
        return self._labels[key], np.unpackbits(bits, count=n).astype(bool)

    def column(self, run_ids: Sequence[str], column: str) -> np.ndarray | None:
        """The ``(runs, images)`` 0/1 matrix of a report column (``balanced``, ``long_tailed``,
        ``head``, …) for runs tested on the same images, or None when the column has no images
        (a group without a manifest) or the runs were tested on different images."""
        split, group = COLUMN_SPLITS[column]
        if group is not None:
            if group not in self.groups:
                return None
            split = self.group_split
        tested = [self.split(r, split) for r in run_ids]
        if not tested:
            return None
        labels = tested[0][0]
        if any(lab is not labels and not np.array_equal(lab, labels) for lab, _ in tested):
            return None
        matrix = np.stack([c for _, c in tested])
        if group is not None:
            matrix = matrix[:, np.isin(labels, self.groups[group])]
        return matrix

    def readable(self, run_ids: Iterable[str]) -> list[str]:
        """The runs of ``run_ids`` that have readable predictions, in order."""
        return [r for r in run_ids if self.has(r)]


# what a cell's interval covers (the ``interval`` column of the results tables' CSVs)
EXACT = "exact binomial"  # one seed: the test images of that one model (Clopper-Pearson)
SEEDS_AND_IMAGES = "seeds and images"  # several seeds: ltexp.statistics.accuracy_interval
SEEDS_ONLY = "seeds only"  # several seeds without predictions: Student's t over their accuracies


def with_seed_intervals(
    cells: pd.DataFrame, results: pd.DataFrame, correctness: Correctness | None
) -> pd.DataFrame:
    """``cells`` (:func:`ltexp.report.tables.cell_means`) with each several-seed cell's interval
    over seeds and test images (:func:`ltexp.statistics.accuracy_interval`) where every seed has
    predictions, and an ``interval`` column naming what each cell's interval covers."""
    out = cells.copy()
    out["interval"] = np.where(out["n_seeds"] > 1, SEEDS_ONLY, EXACT)
    if correctness is None:
        return out
    keys = ["model", "loss", "train_split"]
    by_cell = results.groupby(keys)["run_id"].apply(list)
    for i, row in out[out["n_seeds"] > 1].iterrows():
        run_ids = by_cell.get(tuple(row[k] for k in keys), [])
        if len(correctness.readable(run_ids)) != len(run_ids):
            continue
        for c in COLUMN_SPLITS:
            matrix = correctness.column(run_ids, c)
            if matrix is None or not matrix.shape[1]:
                continue
            found = accuracy_interval(matrix)
            out.loc[i, [f"{c}_ci_low", f"{c}_ci_high"]] = [found.ci_low, found.ci_high]
        out.loc[i, "interval"] = SEEDS_AND_IMAGES
    return out
