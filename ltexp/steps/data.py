"""Config → data adapters shared by the steps: load a source, resolve a protocol, and find, load
and verify a prepared dataset by its prepare_data run."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from ltexp.config import DataConfig
from ltexp.data import PreparedData, Protocol, SourceData, load_source, rebuild
from ltexp.data.prepared import load_indices
from ltexp.errors import DataError, TrackingError
from ltexp.tracking import runs, schema

# DataConfig fields that do not change the prepared data.
_NOT_IDENTITY = ("data_root", "download", "log_scale_counts")


def source_options(data: DataConfig) -> dict[str, Any]:
    """Dataset options from the config (each dataset keeps the ones it declares)."""
    return {
        "num_classes": data.synthetic_classes,
        "train_per_class": data.synthetic_train_per_class,
        "test_per_class": data.synthetic_test_per_class,
        "image_size": data.synthetic_image_size,
        "seed": data.synthetic_seed,
    }


def load_configured_source(data: DataConfig) -> SourceData:
    """Load the configured dataset's source sets."""
    return load_source(data.dataset, data.data_root, data.download, **source_options(data))


def protocol(data: DataConfig, source: SourceData) -> Protocol:
    """The split protocol: configured values, dataset defaults for the sizes left unset."""
    n_train = data.n_max_train or source.n_train_per_class
    n_test = data.n_max_test or source.n_test_per_class
    return Protocol(
        profile=data.profile,
        imbalance_ratio=data.imbalance_ratio,
        pareto_alpha=data.pareto_alpha,
        n_train=n_train,
        n_test=n_test,
        seed=data.split_seed,
        class_order=data.class_order,
    )


def data_key(data: DataConfig) -> str:
    """Hash of the data settings that decide the prepared splits (not where files live)."""
    values = {k: v for k, v in vars(data).items() if k not in _NOT_IDENTITY}
    if data.dataset != "synthetic":
        values = {k: v for k, v in values.items() if not k.startswith("synthetic_")}
    return runs.config_hash(values)


def find_prepared_run(data: DataConfig) -> str | None:
    """The latest FINISHED prepare_data run of these data settings, in any experiment."""
    matches = runs.search_all(
        None,
        f"{schema.search_step(schema.Step.PREPARE_DATA)} and "
        f"tags.`{schema.CONFIG_HASH}` = '{data_key(data)}' and "
        f"attributes.status = 'FINISHED'",
    )
    return matches[0].info.run_id if matches else None


@functools.lru_cache(maxsize=2)
def load_prepared(run_id: str, data_root: str, download: bool = True) -> PreparedData:
    """Rebuild the splits of prepare_data run ``run_id`` from the source files and verify them.

    Cached per process (a study trains every cell on the same data); treat it as read-only.

    Raises:
        TrackingError: not a prepare_data run.
        DataError: artifacts missing or corrupt, or a split whose digest does not match.
    """
    run = runs.get_run(run_id, schema.Step.PREPARE_DATA)
    if run.info.status != "FINISHED":
        raise TrackingError(f"prepare_data run {run_id} is {run.info.status}, not FINISHED")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            manifest_path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=schema.MANIFEST_ARTIFACT, dst_path=tmp
            )
            indices_path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=schema.SPLIT_INDICES_ARTIFACT, dst_path=tmp
            )
        except Exception as e:  # noqa: BLE001 - any failure: the artifacts are unusable
            raise DataError(
                f"prepare_data run {run_id} lacks its manifest or split indices "
                f"({runs.error_line(e)})"
            ) from None
        try:
            manifest = json.loads(Path(manifest_path).read_text())
            opts = manifest["dataset_options"]
            dataset = manifest["dataset"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"manifest of prepare_data run {run_id} is corrupt") from None
        indices = load_indices(Path(indices_path))
    source = load_source(dataset, data_root, download, **opts)
    return rebuild(source, manifest, indices)
