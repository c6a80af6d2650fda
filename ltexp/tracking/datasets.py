"""Prepared datasets in the tracking store: find the prepare_data run of a config, and load
and verify its splits."""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from pathlib import Path

import mlflow

from ltexp import schema
from ltexp.cells import data_key
from ltexp.config import Config, all_fields
from ltexp.data import PreparedData, load_source, rebuild
from ltexp.data.prepared import load_indices
from ltexp.errors import DataError, TrackingError
from ltexp.tracking import runs
from ltexp.tracking.queries import FINISHED, where

log = logging.getLogger(__name__)
DEFAULT_DATA_ROOT = all_fields()["data_root"].default


def find_prepared_run(cfg: Config) -> str | None:
    """The latest FINISHED prepare_data run of these data settings, in any experiment."""
    matches = runs.search_all(
        None,
        where(schema.Step.PREPARE_DATA, status=FINISHED, tags={schema.CONFIG_HASH: data_key(cfg)}),
    )
    return matches[0].info.run_id if matches else None


def prepared_digest(run_id: str) -> str:
    """The data digest of a FINISHED prepare_data run (read from its tags, nothing loaded)."""
    run = runs.get_run(run_id, schema.Step.PREPARE_DATA)
    if run.info.status != "FINISHED":
        raise TrackingError(f"prepare_data run {run_id} is {run.info.status}, not FINISHED")
    digest = run.data.tags.get(schema.DATA_DIGEST)
    if not digest:
        raise TrackingError(f"prepare_data run {run_id} has no {schema.DATA_DIGEST} tag")
    return digest


def data_root_for(run: mlflow.entities.Run, data_root: str) -> str:
    """Where to read the data of a model's run: ``data_root`` when given; left at its default,
    the folder the run trained from (its ``data_root`` param) if that folder is on this machine,
    so `evaluate` and `decouple` of a model trained with ``-P data_root=X`` need not be told X
    again. Either way the splits are verified against the prepare_data run's digests."""
    recorded = run.data.params.get("data_root", "")
    if data_root != DEFAULT_DATA_ROOT or not recorded or recorded == data_root:
        return data_root
    if not Path(recorded).expanduser().is_dir():
        return data_root
    log.info("reading the data from %s, where run %s trained", recorded, run.info.run_id)
    return recorded


@functools.lru_cache(maxsize=2)
def load_prepared(run_id: str, data_root: str, download: bool = True) -> PreparedData:
    """Rebuild the splits of prepare_data run ``run_id`` from the source files and verify them.

    Cached per process (a study trains every cell on the same data); treat it as read-only.

    Raises:
        TrackingError: not a prepare_data run, or not FINISHED.
        DataError: artifacts missing or corrupt, or a split whose digest does not match.
    """
    prepared_digest(run_id)  # a FINISHED prepare_data run
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
