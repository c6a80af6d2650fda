"""Shared fixtures: a temporary tracking store, a tiny CPU config, a CIFAR-format fixture.

Every test that tracks runs gets its own sqlite store in ``tmp_path`` and its own checkpoint and
data folders, so tests never see each other's runs.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network here
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail fast instead of retrying the hub
os.environ.setdefault("LTEXP_LOG_LEVEL", "WARNING")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite tracking store in ``tmp_path`` (also the working directory)."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    while mlflow.active_run():
        mlflow.end_run()
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def tiny_overrides(tmp_path: Path, **extra: object) -> dict[str, object]:
    """Overrides that make the demo preset a few-second CPU job in ``tmp_path``."""
    values: dict[str, object] = {
        "epochs": 2,
        "system_metrics": "false",
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "data_root": str(tmp_path / "data"),
        "bootstrap_samples": 50,
        "deterministic": "true",
        "num_threads": 1,
    }
    values.update(extra)
    return values


@pytest.fixture
def tiny_config(tmp_path: Path, tracking: str):
    """The demo preset shrunk to a few CPU seconds, tracking into ``tmp_path``."""
    from ltexp.config import build_config

    def make(**extra: object):
        return build_config("demo", tiny_overrides(tmp_path, **extra))

    return make


def write_cifar100(
    root: Path, train_per_class: int = 500, test_per_class: int = 100, seed: int = 0
) -> Path:
    """Write torchvision's ``cifar-100-python/`` format with random pixels; return the folder."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(100), per_class)
        rng.shuffle(labels)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        batch = {
            b"filenames": [f"{i}.png".encode() for i in range(len(labels))],
            b"batch_label": name.encode(),
            b"fine_labels": labels.tolist(),
            b"coarse_labels": (labels // 5).tolist(),
            b"data": data,
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    meta = {
        b"fine_label_names": [f"class{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
    }
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size (50,000 + 10,000 images) CIFAR-100 copy with random pixels, read-only use."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root)
    return root
