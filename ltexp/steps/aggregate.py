"""The aggregate step: query the evaluate runs of an experiment, write the report, log it."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np

from ltexp import locks, schema
from ltexp.checkpoint import folder_problem
from ltexp.config import Config
from ltexp.errors import ConfigError, HostError, TrackingError
from ltexp.report.build import (
    Grid,
    Report,
    ReportInputs,
    ReportOptions,
    build_report,
    results_frame,
)
from ltexp.report.claims import load_claims
from ltexp.timing import timed
from ltexp.tracking import claims, runs
from ltexp.tracking.queries import FINISHED, where
from ltexp.tracking.questions import query_results

log = logging.getLogger(__name__)


@dataclass
class AggregateResult:
    """The aggregate run and where its report is."""

    run_id: str
    output_dir: Path
    report: Report


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


def load_predictions(run_id: str) -> dict[str, np.ndarray] | None:
    """The predictions an evaluate run saved (``np.load(allow_pickle=False)``: arrays only), or
    None when it has none (a run logged by another tool) or they cannot be read (truncated, not
    an archive): the report leaves that run's comparisons out and says so.

    Raises:
        TrackingError: the store stopped answering (after MLflow's bounded retries): the
            report is not written at all rather than written without the runs it could not read.
    """
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=schema.PREDICTIONS_ARTIFACT, dst_path=tmp
            )
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except Exception as e:  # noqa: BLE001 - sorted below: the store's failure, or the run's
            if _unreachable(e):
                raise TrackingError(
                    f"the predictions of evaluate run {run_id} could not be read: "
                    f"{runs.store_failure(e)}; no report was written"
                ) from None
            return None


def _unreachable(e: BaseException) -> bool:
    """The store (not the run's artifact) failed: a connection refused, reset or timed out."""
    text = f"{type(e).__name__} {e}".lower()
    return any(
        word in text
        for word in ("max retries exceeded", "connection refused", "connectionerror", "timed out")
    )


def report_folder(name: str) -> Path:
    """``reports/<experiment>`` with the name made a safe folder name (never a path)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"
    return Path("reports") / slug


def _check_writable(path: Path) -> None:
    """Refuse a report folder that cannot be made or written, before anything is built; a
    folder made only to test it is removed again (:func:`ltexp.checkpoint.folder_problem`).
    Under the report's lock: a publish moving the folder meanwhile would lose the probe, or
    find it and refuse the folder as not its own."""
    with locks.held("report", path):
        why = folder_problem(path)
    if why:
        raise ConfigError(
            f"output_dir {str(path)!r} cannot be written ({why}); choose another output_dir"
        )


REPORT_SUFFIXES = (".csv", ".png", ".pdf", ".md", ".tex", ".html", ".json")


def publish(files: list[Path], out: Path) -> None:
    """Put a built report in ``out`` at once: copied into a folder beside it, which then takes
    its place, so that a killed process leaves the previous report or the new one, never half.
    A folder that holds more than a report (a user's folder) gets each file replaced atomically
    instead, and keeps the rest. Two processes publishing the same folder take turns (two
    studies ending together), so neither removes the files the other is copying."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with locks.held("report", out):
        try:
            _publish(files, out)
        except OSError as e:  # a full disk: say where, and leave no half-copied folder
            for partial in out.parent.glob(f".{out.name}.incoming-{os.getpid()}"):
                shutil.rmtree(partial, ignore_errors=True)
            for part in out.glob(".*.incoming") if out.is_dir() else ():
                part.unlink(missing_ok=True)
            raise HostError(
                f"cannot write the report to '{out}' ({e.strerror or e}); free space there or "
                f"choose another output_dir (the previous report, if any, is unchanged)"
            ) from None


def _publish(files: list[Path], out: Path) -> None:
    parent = out.parent
    for stale in parent.glob(f".{out.name}.*-*"):  # what a killed publish left: the lock is ours
        shutil.rmtree(stale, ignore_errors=True)
    own = not out.exists() or all(
        p.is_file() and p.suffix in REPORT_SUFFIXES for p in out.iterdir()
    )
    if not own:
        for path in files:
            part = out / f".{path.name}.incoming"
            shutil.copyfile(path, part)
            os.replace(part, out / path.name)
        return
    incoming = parent / f".{out.name}.incoming-{os.getpid()}"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir()
    for path in files:
        shutil.copyfile(path, incoming / path.name)
    previous = parent / f".{out.name}.previous-{os.getpid()}"
    if out.exists():
        os.replace(out, previous)
    os.replace(incoming, out)
    shutil.rmtree(previous, ignore_errors=True)


@timed("report")
def run_aggregate(
    cfg: Config,
    grid: Grid | None = None,
    parent_run_id: str | None = None,
    announce: Callable[[str], None] = log.info,
) -> AggregateResult:
    """Build the report of an experiment (see :func:`choose_experiment`) and log it as a run.

    Args:
        announce: receives, first, which experiment is reported and how to choose another.
    """
    load_claims(cfg.report.claims)  # a bad claims file: one line, before anything is read
    name, why = choose_experiment(cfg)
    exp = runs.client().get_experiment_by_name(name)
    if exp is None:
        raise TrackingError(
            f"experiment {name!r} does not exist on {runs.safe_uri()}; give experiment=<name>"
        )
    if why != "named":
        announce(
            f"reporting experiment {name!r} ({why}); choose another with "
            f"-P experiment=<name> (mlflow run) or --experiment <name>"
        )
    exp_id = exp.experiment_id
    if schema.EXPERIMENT_KIND_TAG not in exp.tags:  # an experiment of an earlier ltexp
        runs.mark_model_training(exp_id)
    claims.reap_dead_runs([exp_id])  # an aggregate killed before it finished, among others
    out = Path(cfg.report.output_dir).expanduser() if cfg.report.output_dir else report_folder(name)
    _check_writable(out)
    records = query_results(exp_id, cfg.report.report_dataset)
    if not records:
        raise TrackingError(
            f"experiment {name!r} has no FINISHED evaluate runs to report; run "
            f"`ltexp main` or `ltexp train` first"
        )
    datasets = sorted({r["dataset"] for r in records})
    if len(datasets) > 1:
        raise ConfigError(
            f"experiment {name!r} holds results of several datasets {datasets}; "
            f"choose one with report_dataset=<name>"
        )
    manifest, notes = find_manifest({r["data_digest"] for r in records})
    for note in notes:
        log.warning("%s", note)
    inputs = ReportInputs(results_frame(records), manifest, load_predictions, notes)
    options = ReportOptions(
        percent=cfg.report.percent,
        intervals=cfg.report.intervals,
        references=cfg.report.references,
        claims=cfg.report.claims,
        variant=cfg.report.variant,
        experiment=name,
    )
    launched, wrapper = None, None
    if not parent_run_id and not mlflow.active_run():
        # the report's run belongs with the experiment it reports
        launched, wrapper = runs.launched_run_for(exp_id)
    with tempfile.TemporaryDirectory() as tmp:
        # build in a temporary folder first: a failure leaves output_dir as it was
        report = build_report(inputs, Path(tmp), grid, options)
        with runs.step_run(
            schema.Step.AGGREGATE,
            experiment_id=exp_id,
            run_id=launched,
            wrapper=wrapper,
            run_name=schema.aggregate_run_name(name),
            parent_run_id=parent_run_id,
            description=f"Report of {len(records)} evaluate runs of {name}: "
            f"{len(report.missing)} missing cells, "
            f"{len(report.duplicates)} duplicates.",
        ) as run:
            runs.log_params(
                {"experiment": name, "dataset": datasets[0], "n_evaluate_runs": len(records)}
            )
            verdicts = [v.verdict for v in report.claims]
            mlflow.log_metrics(
                {
                    schema.MISSING_CELLS: len(report.missing),
                    schema.DUPLICATE_CELLS: len(report.duplicates),
                    **(
                        {
                            schema.CLAIMS_REPRODUCED: verdicts.count("reproduced"),
                            schema.CLAIMS_CONTRADICTED: verdicts.count("contradicted"),
                            schema.CLAIMS_INCONCLUSIVE: verdicts.count("inconclusive"),
                        }
                        if report.claims
                        else {}
                    ),
                }
            )
            mlflow.set_tags({schema.claim_tag(v.claim.id): v.verdict for v in report.claims})
            mlflow.log_artifacts(tmp, artifact_path=schema.REPORT_ARTIFACT_DIR)
            # the report reads in the UI: the aggregate run and its study link to its page
            link = runs.ui_link(exp_id, run.info.run_id, schema.REPORT_HTML)
            for described in filter(None, (run.info.run_id, parent_run_id)):
                runs.add_to_description(
                    described, f"[Open the report]({link}): every table and figure, in the UI."
                )
            publish(report.files, out)
            report.files = [out / p.name for p in report.files]
            report.output_dir = out
            return AggregateResult(run.info.run_id, out, report)
