"""The aggregate step: query the evaluate runs of an experiment, write the report, log it."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from ltexp.config import Config
from ltexp.errors import ConfigError, TrackingError
from ltexp.report.build import Grid, Report, build_report, results_frame
from ltexp.tracking import runs, schema

log = logging.getLogger(__name__)


@dataclass
class AggregateResult:
    """The aggregate run and where its report is."""

    run_id: str
    output_dir: Path
    report: Report


def query_results(experiment_id: str, dataset: str = "") -> list[dict]:
    """Every FINISHED evaluate run of the experiment, as records (one paginated query)."""
    found = runs.search_all(
        [experiment_id],
        f"{schema.search_step(schema.Step.EVALUATE)} and attributes.status = 'FINISHED'",
    )
    records = []
    for run in found:
        p, m = run.data.params, run.data.metrics
        if any(k not in p for k in schema.CELL_PARAMS):
            continue
        if dataset and p["dataset"] != dataset:
            continue
        records.append(
            {
                "run_id": run.info.run_id,
                "end_time": run.info.end_time or 0,
                **{k: p[k] for k in schema.CELL_PARAMS},
                **{col: m.get(name) for col, name in schema.REPORT_COLUMNS.items()},
            }
        )
    return records


def _check_writable(path: Path) -> None:
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise ConfigError(
            f"output_dir {str(path)!r} cannot be written (no write permission on "
            f"{str(probe)!r}); choose another output_dir"
        )


def run_aggregate(
    cfg: Config, grid: Grid | None = None, parent_run_id: str | None = None
) -> AggregateResult:
    """Build the report of ``cfg.experiment`` (default: the preset's experiment)."""
    name = runs.experiment_name(
        cfg.experiment, runs.default_experiment(cfg.preset, cfg.data.dataset)
    )
    exp = runs.client().get_experiment_by_name(name)
    if exp is None:
        raise TrackingError(
            f"experiment {name!r} does not exist on {mlflow.get_tracking_uri()}; "
            f"give experiment=<name>"
        )
    exp_id = exp.experiment_id
    out = Path(cfg.report.output_dir or Path("reports") / name).expanduser()
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
    frame = results_frame(records)
    launched = None if parent_run_id or mlflow.active_run() else runs.launched_run_id()
    with tempfile.TemporaryDirectory() as tmp:
        # build in a temporary folder first: a failure leaves output_dir as it was
        report = build_report(frame, Path(tmp), grid)
        with runs.step_run(
            schema.Step.AGGREGATE,
            experiment_id=exp_id,
            run_id=launched,
            run_name=schema.aggregate_run_name(name),
            parent_run_id=parent_run_id,
            description=f"Report of {len(records)} evaluate runs of {name}: "
            f"{len(report.missing)} missing cells, "
            f"{len(report.duplicates)} duplicates.",
        ) as run:
            runs.log_params(
                {"experiment": name, "dataset": datasets[0], "n_evaluate_runs": len(records)}
            )
            mlflow.log_metrics(
                {
                    schema.MISSING_CELLS: len(report.missing),
                    schema.DUPLICATE_CELLS: len(report.duplicates),
                }
            )
            mlflow.log_artifacts(tmp, artifact_path=schema.REPORT_ARTIFACT_DIR)
            out.mkdir(parents=True, exist_ok=True)
            for path in report.files:
                shutil.copyfile(path, out / path.name)
            report.files = [out / p.name for p in report.files]
            report.output_dir = out
            return AggregateResult(run.info.run_id, out, report)
