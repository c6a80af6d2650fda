"""The study's questions to the tracking store, each answered with a bounded number of
paginated searches (``runs.search_all``), however many runs the store holds: which cells are
finished, what a search found, which results to report.

The filters are written by :mod:`ltexp.tracking.queries`; the names by :mod:`ltexp.schema`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from ltexp import schema
from ltexp.cells import code_version, decouple_hash
from ltexp.config import Config, variant_axes
from ltexp.errors import TrackingError
from ltexp.tracking import claims, runs
from ltexp.tracking.queries import ENDED_UNFINISHED, FINISHED, where


def post_hoc(params: Mapping[str, str]) -> bool:
    """An evaluate run that adjusted the model after training (``tau`` or ``temperature``): not
    the cell's own result. A value left empty is the default (none); an unreadable one counts
    as adjusted."""
    return _number(params.get(schema.TAU), 0.0) != 0 or (
        _number(params.get(schema.TEMPERATURE), 1.0) != 1
    )


def _number(text: str | None, default: float) -> float:
    if text is None or not text.strip():
        return default
    try:
        return float(text)
    except ValueError:
        return float("nan")


def best_tuned(cfg: Config) -> tuple[str | None, dict[str, Any]]:
    """The latest finished search of this cell (dataset, model, loss, training set): its tune
    run and best values; ``(None, {})`` when it was never tuned."""
    t = cfg.train
    found = runs.search_all(
        None,
        where(
            schema.Step.TUNE,
            status=FINISHED,
            tags={schema.TUNE_CELL: schema.tune_cell(t.model, t.loss, t.train_split)},
            params={"dataset": cfg.data.dataset},
        ),
        order_by=["attributes.end_time DESC"],
    )
    for run in found:
        values = run.data.tags.get(schema.BEST_PARAMS)
        if values:
            return run.info.run_id, json.loads(values)
    return None, {}


def best_values_of(tune_run: str) -> dict[str, Any]:
    """The best values a tune run found."""
    return json.loads(runs.client().get_run(tune_run).data.tags.get(schema.BEST_PARAMS, "{}"))


def tuned_tags(tune_run: str) -> dict[str, str]:
    """What a train run records of the search whose values it uses."""
    values = runs.client().get_run(tune_run).data.tags.get(schema.BEST_PARAMS, "{}")
    return {schema.TUNED_FROM: tune_run, schema.TUNED_PARAMS: values}


def finished_cells(experiment_id: str) -> dict[str, tuple[str, str | None]]:
    """config hash → (finished train run, its finished evaluate run or None), this code only."""
    trains = runs.search_all(
        [experiment_id],
        where(schema.Step.TRAIN, status=FINISHED, tags={schema.CODE_VERSION: code_version()}),
    )
    evals = runs.search_all(
        [experiment_id],
        where(schema.Step.EVALUATE, status=FINISHED),
    )
    eval_of = {}
    for run in evals:
        train_id = run.data.params.get(schema.TRAIN_RUN_ID)
        if train_id and not post_hoc(run.data.params):
            eval_of.setdefault(train_id, run.info.run_id)
    out: dict[str, tuple[str, str | None]] = {}
    for run in trains:  # newest first: keep the latest per hash
        h = run.data.tags.get(schema.CONFIG_HASH)
        if h and h not in out:
            out[h] = (run.info.run_id, eval_of.get(run.info.run_id))
    return out


def unfinished_evaluation(train_run_id: str, tau: float, scaling: bool) -> str | None:
    """An evaluate run of this model, ``tau`` and temperature scaling (or not) that can be
    continued (not ended unfinished), if any; runs of dead processes are reaped first."""
    claims.reap_dead_runs()
    found = runs.search_all(
        None,
        where(
            schema.Step.EVALUATE,
            params={schema.TRAIN_RUN_ID: train_run_id},
            not_status=ENDED_UNFINISHED,
        ),
    )
    for run in found:
        scaled = _number(run.data.params.get(schema.TEMPERATURE), 1.0) != 1
        if _number(run.data.params.get(schema.TAU), 0.0) == float(tau) and scaled == scaling:
            return run.info.run_id
    return None


def unfinished_train_runs(exp_id: str) -> list[mlflow.entities.Run]:
    """The train runs of the experiment that have not finished (running, failed or killed)."""
    return runs.search_all([exp_id], where(schema.Step.TRAIN, not_status=(FINISHED,)))


def finished_ensemble(experiment_id: str, chash: str) -> mlflow.entities.Run | None:
    """A FINISHED ensemble run of this identity that registered its model, if any."""
    found = runs.search_all(
        [experiment_id],
        where(schema.Step.ENSEMBLE, status=FINISHED, tags={schema.CONFIG_HASH: chash}),
    )
    return next((r for r in found if r.data.tags.get(schema.MODEL_URI)), None)


def evaluations_of(exp_id: str, model_run_id: str) -> list[mlflow.entities.Run]:
    """The FINISHED evaluate runs of a train, decouple or ensemble run."""
    return runs.search_all(
        [exp_id],
        where(schema.Step.EVALUATE, status=FINISHED, params={schema.TRAIN_RUN_ID: model_run_id}),
    )


def evaluated_stage2(exp_id: str, stage1_run_id: str, identity: dict[str, Any]) -> str | None:
    """A finished decouple run of this identity with a finished evaluation, if any."""
    found = claims.finished_run(
        exp_id, decouple_hash(stage1_run_id, identity), schema.Step.DECOUPLE
    )
    if found is None:
        return None
    return found if evaluations_of(exp_id, found) else None


def unfinished_study(exp_id: str, shash: str) -> str | None:
    """The study run of this identity that can be continued (not ended unfinished), if any."""
    found = runs.search_all(
        [exp_id],
        where(schema.Step.MAIN, tags={schema.CONFIG_HASH: shash}, not_status=ENDED_UNFINISHED),
    )
    return found[0].info.run_id if found else None


def query_results(experiment_id: str, dataset: str = "") -> list[dict]:
    """Every FINISHED evaluate run of the experiment that tested a checkpoint as trained (no
    post-hoc adjustment), as records (one paginated query)."""
    found = runs.search_all(
        [experiment_id],
        where(schema.Step.EVALUATE, status=FINISHED),
    )
    models = [
        run for step in schema.MODEL_STEPS for run in runs.search_all([experiment_id], where(step))
    ]
    tuned = {r.info.run_id: r.data.tags.get(schema.TUNED_PARAMS, "") for r in models}
    identity = {r.info.run_id: runs.recorded_identity(r) or None for r in models}
    by_id = {r.info.run_id: r for r in models}
    # an ensemble's members, by the versions it lists: their train (or decouple) runs
    run_of_version = {r.data.tags.get(schema.MODEL_URI): r.info.run_id for r in models}
    records = []
    for run in found:
        p, m = run.data.params, run.data.metrics
        if any(k not in p for k in schema.CELL_PARAMS):
            continue
        if dataset and p["dataset"] != dataset:
            continue
        if post_hoc(p):
            continue  # a post-hoc adjusted evaluation is not the cell's result
        record = {
            "run_id": run.info.run_id,
            "end_time": run.info.end_time or 0,
            "data_digest": run.data.tags.get(schema.DATA_DIGEST, ""),
            "tuned_params": tuned.get(p.get(schema.TRAIN_RUN_ID, ""), ""),
            "identity": identity.get(p.get(schema.TRAIN_RUN_ID, "")),
            "train_run_id": p.get(schema.TRAIN_RUN_ID, ""),
            "best_val_acc1": _val_acc1(by_id.get(p.get(schema.TRAIN_RUN_ID, ""))),
            **{k: p[k] for k in schema.CELL_PARAMS},
            **{a.key: p.get(a.key, a.plain) for a in variant_axes()},
        }
        for col, name in {**schema.REPORT_COLUMNS, **schema.SHOT_COLUMNS}.items():
            record[col] = m.get(name)
            record[f"{col}_ci_low"] = m.get(name + "_ci_low")
            record[f"{col}_ci_high"] = m.get(name + "_ci_high")
            record[f"{col}_ece"] = m.get(name.removesuffix("_acc1") + "_ece")
        model_run = by_id.get(p.get(schema.TRAIN_RUN_ID, ""))
        if model_run is not None and model_run.data.tags.get(schema.STEP) == schema.Step.ENSEMBLE:
            versions = model_run.data.tags.get(schema.ENSEMBLE_MEMBERS, "").split(",")
            record["ensemble"] = model_run.info.run_name
            record["members"] = ",".join(run_of_version.get(v, "") for v in versions)
            record["combine"] = model_run.data.params.get("combine", "logits")
        records.append(record)
    return records


def _val_acc1(run: mlflow.entities.Run | None) -> float | None:
    return None if run is None else run.data.metrics.get(schema.BEST_VAL_ACC1)


def choose_experiment(cfg: Config) -> tuple[str, str]:
    """The experiment to report, and why: the one named; else the experiment ``mlflow run``
    chose if it holds evaluate runs; else the one whose evaluate run finished last."""
    if cfg.experiment:
        return cfg.experiment, "named"
    launched = runs.launched_experiment_id()
    evaluated = where(schema.Step.EVALUATE, status=FINISHED)
    client = runs.client()
    if launched and client.search_runs([launched], evaluated, max_results=1):
        return client.get_experiment(launched).name, "the experiment mlflow run chose"
    latest = runs.client().search_runs(
        [e.experiment_id for e in client.search_experiments()],
        evaluated,
        max_results=1,
        order_by=["attributes.end_time DESC"],
    )
    if not latest:
        raise TrackingError(
            f"no experiment on {runs.safe_uri()} has FINISHED evaluate runs to report; run "
            f"`ltexp main` (or `mlflow run .`) first"
        )
    return client.get_experiment(latest[0].info.experiment_id).name, "the latest evaluated"


def find_manifest(digests: set[str]) -> tuple[dict | None, list[str]]:
    """The prepare_data manifest of the data the results used, and notes on what is wrong."""
    digests = {d for d in digests if d}
    if len(digests) != 1:
        what = "no data digest" if not digests else f"{len(digests)} different data digests"
        return None, [f"the evaluate runs carry {what}, so no one prepare_data run describes them"]
    (digest,) = digests
    found = runs.search_all(
        None,
        where(schema.Step.PREPARE_DATA, status=FINISHED, tags={schema.DATA_DIGEST: digest}),
    )
    for run in found:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=run.info.run_id, artifact_path=schema.MANIFEST_ARTIFACT, dst_path=tmp
                )
                return json.loads(Path(path).read_text()), []
            except Exception:  # noqa: BLE001 - try the next one; none: say so below
                continue
    return None, [f"no FINISHED prepare_data run with data digest {digest[:12]}… has a manifest"]
