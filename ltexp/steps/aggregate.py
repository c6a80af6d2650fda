"""The aggregate step: query the evaluate runs of an experiment, write the report, log it."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow

from ltexp import schema
from ltexp.config import Config
from ltexp.errors import ConfigError, TrackingError
from ltexp.report.build import (
    Grid,
    Report,
    ReportInputs,
    ReportOptions,
    build_report,
    results_frame,
)
from ltexp.report.claims import load_claims
from ltexp.report.folder import check_writable, publish, report_folder
from ltexp.timing import timed
from ltexp.tracking import claims, runs
from ltexp.tracking.questions import choose_experiment, find_manifest, query_results
from ltexp.tracking.results import load_predictions

log = logging.getLogger(__name__)


@dataclass
class AggregateResult:
    """The aggregate run and where its report is."""

    run_id: str
    output_dir: Path
    report: Report


@timed("report")
def run_aggregate(
    cfg: Config,
    grid: Grid | None = None,
    parent_run_id: str | None = None,
    announce: Callable[[str], None] = log.info,
) -> AggregateResult:
    """Build the report of an experiment and log it as a run (which experiment:
    :func:`ltexp.tracking.questions.choose_experiment`).

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
    check_writable(out)
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
