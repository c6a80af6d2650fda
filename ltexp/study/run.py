"""Running a study: one cell (``ltexp train``), or the whole grid (``ltexp main``).

- :func:`run_cell`: the prepared data (found, or prepared now), the train step, then the
  evaluate step as a child of the train run (and the cell's second stage, if asked).
- :func:`run_study`: prepare_data → every cell of the plan (:mod:`ltexp.study.plan`) → second
  stages → ensembles → aggregate, as child runs of one study run. Re-running it reuses finished
  cells (:mod:`ltexp.tracking.questions`) and resumes unfinished ones; cells another process
  has are waited for and taken over when it dies (:mod:`ltexp.study.handoff`).

The steps (:mod:`ltexp.steps`) each run one MLflow run and import no other step; this package is
what chains them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import mlflow

from ltexp import cells, schema
from ltexp.cells import grid_cells, study_hash
from ltexp.checkpoint import ensure_folder
from ltexp.config import Config, axes, axis
from ltexp.distributed import DistContext
from ltexp.errors import ConfigError
from ltexp.progress import labelled
from ltexp.report.build import Grid
from ltexp.report.claims import load_claims
from ltexp.steps.aggregate import run_aggregate
from ltexp.steps.decouple import run_decouple
from ltexp.steps.ensemble import run_ensemble
from ltexp.steps.evaluate import run_evaluate
from ltexp.steps.prepare_data import run_prepare_data
from ltexp.steps.train import TrainHooks, TrainResult, run_train
from ltexp.study import executors
from ltexp.study.executors import CellTask
from ltexp.study.handoff import wait_for
from ltexp.study.plan import PlannedCell, plan_cells
from ltexp.tracking import claims, runs
from ltexp.tracking.datasets import find_prepared_run, load_prepared, prepared_digest
from ltexp.tracking.questions import (
    evaluated_stage2,
    evaluations_of,
    finished_cells,
    tuned_tags,
    unfinished_study,
)
from ltexp.training.setup import check_weights, resolve_train

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass
class CellResult:
    """A cell's train (or decouple) run (``train.model_uri`` is empty on a data-parallel
    replica), its evaluate run if it ran, and its second stage if one was asked for."""

    train: TrainResult
    evaluate_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    stage2: CellResult | None = None


@dataclass
class StudyResult:
    """What a study did."""

    run_id: str
    report_dir: Path | None
    reused: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    results_view: str = ""  # the UI's runs table of the results (runs.save_results_view)


def run_cell(
    cfg: Config, parent_run_id: str | None = None, tuned_from: str | None = None
) -> CellResult:
    """Train one cell on its prepared data (preparing it first if none matches), then evaluate
    the registered checkpoint as a child run of the train run (unless ``evaluate_after=false``).

    Args:
        tuned_from: the tune run whose best values ``cfg`` holds (recorded on the train run).
    """
    if DistContext.from_env().is_main and not cfg.train.data_run:
        # refuse a bad request before preparing anything
        check_weights(cfg, resolve_train(cfg))
        ensure_folder(cfg.runtime.checkpoint_dir)
        data_run = find_prepared_run(cfg) or run_prepare_data(cfg, claim_launched=False)
        cfg = cfg.replace(data_run=data_run)
    hooks = TrainHooks(tags=tuned_tags(tuned_from), tuned=True) if tuned_from else TrainHooks()
    train = run_train(cfg, parent_run_id=parent_run_id, hooks=hooks)
    result = CellResult(train)
    if train.model_uri and cfg.train.evaluate_after:
        result.evaluate_run_id, result.metrics = run_evaluate(
            cfg, train_run_id=train.run_id, parent_run_id=train.run_id
        )
    if train.model_uri and cfg.decouple.stage2 != "none":
        result.stage2 = run_stage2(cfg, stage1_run_id=train.run_id, parent_run_id=train.run_id)
    return result


def run_stage2(
    cfg: Config, stage1_run_id: str | None = None, parent_run_id: str | None = None
) -> CellResult:
    """Decouple a train run's model (``cfg.decouple.stage2``), then evaluate the new version as
    a child of the decouple run (unless ``evaluate_after=false``)."""
    stage2 = run_decouple(cfg, stage1_run_id, parent_run_id=parent_run_id)
    result = CellResult(stage2)
    if stage2.model_uri and cfg.train.evaluate_after:
        result.evaluate_run_id, result.metrics = run_evaluate(
            cfg, train_run_id=stage2.run_id, parent_run_id=stage2.run_id
        )
    return result


def run_ensembled(
    cfg: Config, members: list[str] | None = None, parent_run_id: str | None = None
) -> CellResult:
    """Build (or find) the ensemble of ``members`` (default ``cfg.ensemble.members``), then
    evaluate it as a child of its run unless it has an evaluation or ``evaluate_after=false``."""
    built = run_ensemble(cfg, members, parent_run_id=parent_run_id)
    result = CellResult(built)
    if built.model_uri and cfg.train.evaluate_after:
        exp_id = runs.client().get_run(built.run_id).info.experiment_id
        evaluated = evaluations_of(exp_id, built.run_id)
        if evaluated:
            result.evaluate_run_id = evaluated[0].info.run_id
            result.metrics = dict(evaluated[0].data.metrics)
        else:
            result.evaluate_run_id, result.metrics = run_evaluate(
                cfg, train_run_id=built.run_id, parent_run_id=built.run_id
            )
    return result


def _grid_params(cfg: Config, n_cells: int) -> dict[str, Any]:
    """The study run's params: each axis's values (``models``, ``samplers``, …) and the rest."""
    values = {a.grid_key: ",".join(map(str, cfg.grid_values(a.key))) for a in axes()}
    return {
        **values,
        "preset": cfg.preset,
        "dataset": cfg.data.dataset,
        "n_cells": n_cells,
        "epochs": cfg.train.epochs,
    }


def run_study(
    cfg: Config, parent_run_id: str | None = None, progress: Progress = log.info
) -> StudyResult:
    """Run the whole study; return the parent run and the report folder.

    Args:
        progress: receives one line per cell (the CLI prints them).
    """
    n_cells = len({c.stage1() for c in grid_cells(cfg)})  # every unknown value refused first
    if cfg.ensemble.ensemble_top_k == 1:
        raise ConfigError("ensemble_top_k=1 is one model, not an ensemble; use 0 (none) or k >= 2")
    executors.check_available(cfg)
    load_claims(cfg.report.claims)  # a bad claims file is refused now, not after the training
    if cfg.train.data_run:
        prepared_digest(cfg.train.data_run)  # refused before the study's run exists
    cfg = cfg.replace(
        experiment=runs.experiment_name(
            cfg.experiment, runs.default_experiment(cfg.preset, cfg.data.dataset)
        )
    )
    exp_id = runs.resolve_experiment(cfg.experiment, default=cfg.experiment)
    claims.reap_dead_runs()
    shash = study_hash(cfg)
    launched = None if parent_run_id else runs.launched_run_id()
    main_id = launched or unfinished_study(exp_id, shash)
    sizes = " × ".join(
        f"{len(cfg.grid_values(a.key))} {a.grid_key.removeprefix('study_')}"
        for a in axes()
        if a.stage == 1
    )
    stages = ", ".join(map(str, cfg.grid_values("stage2")))
    with runs.step_run(
        schema.Step.MAIN,
        experiment_id=exp_id,
        run_id=main_id,
        run_name=schema.study_run_name(cfg.experiment),
        parent_run_id=parent_run_id,
        tags={schema.CONFIG_HASH: shash},
        description=f"Study of {n_cells} cells: {sizes} on {cfg.data.dataset}; second "
        f"stages: {stages}.",
    ) as run:
        study_run = run.info.run_id
        if main_id is None:
            runs.log_params(_grid_params(cfg, n_cells))
        # the data, once, before any cell (and before any fan-out to workers)
        data_run = (
            cfg.train.data_run
            or find_prepared_run(cfg)
            or run_prepare_data(cfg, parent_run_id=study_run)
        )
        cfg = cfg.replace(data_run=data_run)
        digest = prepared_digest(data_run)
        if "balanced" in cfg.grid_values("train_split"):  # a set long-tailed as given may
            load_prepared(data_run, cfg.data.data_root, cfg.data.download).training_split(
                "balanced"  # have none: say so now
            )
        trained, decoupled = plan_cells(cfg, digest)
        done = {} if cfg.study.force else finished_cells(exp_id)
        todo, result = [], StudyResult(study_run, None)
        for i, planned in enumerate(trained, start=1):
            train_id, eval_id = done.get(planned.config_hash, (None, None))
            if train_id and eval_id:
                progress(
                    f"[{i}/{len(trained)}] {planned.name}: reused (train {train_id}, "
                    f"evaluate {eval_id})"
                )
                result.reused.append(planned.name)
                continue
            todo.append(
                CellTask(
                    i,
                    planned.name,
                    planned.config,
                    train_id,
                    planned.config_hash,
                    planned.tuned_from,
                )
            )
        ran = _run_cells(todo, len(trained), cfg, exp_id, study_run, progress)
        result.ran.extend(ran)
        _second_stages(trained, decoupled, cfg, exp_id, result, progress)
        _ensembles(trained, cfg, exp_id, study_run, result, progress)
        grid = Grid(
            *(list(map(str, cfg.grid_values(k))) for k in ("model", "loss", "train_split")),
            [str(x) for x in cfg.grid_values("seed")],
            cell_keys={cells.cell_key(p.identity) for p in [*trained, *decoupled]},
        )
        report = run_aggregate(cfg, grid=grid, parent_run_id=study_run)
        result.report_dir = report.output_dir
        view = runs.save_results_view(exp_id)
        result.results_view = runs.ui_address(view)
        runs.add_to_description(
            study_run,
            f"[The results table]({view}): the train runs with their test accuracies as "
            f"columns, best first.",
        )
        mlflow.log_metrics(
            {schema.CELLS_REUSED: len(result.reused), schema.CELLS_RUN: len(result.ran)}
        )
        return result


def _second_stages(
    trained: list[PlannedCell],
    decoupled: list[PlannedCell],
    cfg: Config,
    exp_id: str,
    result: StudyResult,
    progress: Progress,
) -> None:
    """Each second stage of the grid on its cell's trained model, here, after every cell is
    trained (a decouple run is short: the backbone is frozen). A finished, evaluated decouple
    run of the same model and settings is reused."""
    if not decoupled:
        return
    finished = finished_cells(exp_id)
    stage1_of = {p.cell: p for p in trained}
    total = len(decoupled)
    for i, planned in enumerate(decoupled, start=1):
        stage1, _ = finished.get(stage1_of[planned.cell.stage1()].config_hash, (None, None))
        name = planned.name
        if stage1 is None:  # its training failed: reported as a missing cell
            progress(f"[stage 2 {i}/{total}] {name}: skipped, the cell has no trained model")
            continue
        done = None if cfg.study.force else evaluated_stage2(exp_id, stage1, planned.identity)
        if done:
            progress(f"[stage 2 {i}/{total}] {name}: reused (decouple {done})")
            result.reused.append(name)
            continue
        started = time.perf_counter()
        try:
            out = run_stage2(planned.config, stage1_run_id=stage1, parent_run_id=stage1)
        except claims.CellTaken as taken:
            if runs.client().get_run(taken.winner).info.status != "FINISHED":
                progress(f"[stage 2 {i}/{total}] {name}: {taken}")  # another process has it
                continue
            # finished without its evaluation: evaluate it here
            out = CellResult(TrainResult(taken.winner, -1.0, 0, ""))
            out.evaluate_run_id, out.metrics = run_evaluate(
                planned.config, train_run_id=taken.winner, parent_run_id=taken.winner
            )
        lt = out.metrics.get(schema.test_metric("lt"))
        progress(
            f"[stage 2 {i}/{total}] {name}: decouple {out.train.run_id}"
            + (f", test_lt_acc1 {lt:.4f}" if lt is not None else "")
            + f" ({time.perf_counter() - started:.1f}s)"
        )
        result.ran.append(name)


def ensemble_groups(trained: list[PlannedCell], exp_id: str, k: int) -> list[tuple[str, list[str]]]:
    """The study's ensembles: per backbone, training set, seed and variant, the registered
    models of the ``k`` losses with the best validation top-1 (``(label, model URIs)``; a group
    with fewer than two trained models has none)."""
    finished = finished_cells(exp_id)
    groups: dict[tuple, list[tuple[float, int, str]]] = {}
    for order, planned in enumerate(trained):
        train_id, _ = finished.get(planned.config_hash, (None, None))
        if train_id is None:
            continue
        run = runs.client().get_run(train_id)
        uri = run.data.tags.get(schema.MODEL_URI)
        if not uri:
            continue
        key = tuple((k_, v) for k_, v in planned.cell.values if k_ != "loss")
        val = run.data.metrics.get(schema.BEST_VAL_ACC1, -1.0)
        groups.setdefault(key, []).append((-val, order, uri))
    out = []
    for key, found in groups.items():
        if len(found) >= 2:
            values = dict(key)
            off = [axis(a).named(v) for a, v in key if axis(a).plain not in (None, v)]
            label = schema.run_name(
                values["model"], f"top{k}", values["train_split"], values["seed"], "+".join(off)
            )
            out.append((label, [uri for *_, uri in sorted(found)[:k]]))
    return out


def _ensembles(
    trained: list[PlannedCell],
    cfg: Config,
    exp_id: str,
    study_run: str,
    result: StudyResult,
    progress: Progress,
) -> None:
    """``ensemble_top_k``: the ensemble of the best k losses (by validation) of each backbone,
    training set, seed and variant, built (or found) and evaluated after the grid."""
    k = cfg.ensemble.ensemble_top_k
    if k < 2:
        return
    groups = ensemble_groups(trained, exp_id, k)
    for i, (label, uris) in enumerate(groups, start=1):
        started = time.perf_counter()
        out = run_ensembled(cfg, uris, parent_run_id=study_run)
        lt = out.metrics.get(schema.test_metric("lt"))
        progress(
            f"[ensemble {i}/{len(groups)}] {label}: top {len(uris)} by validation, ensemble "
            f"{out.train.run_id}, val_acc1 {out.train.best_val_acc1:.4f}"
            + (f", test_lt_acc1 {lt:.4f}" if lt is not None else "")
            + f" ({time.perf_counter() - started:.1f}s)"
        )
        result.ran.append(f"ensemble {label}")


def _run_cells(
    todo: list[CellTask],
    total: int,
    cfg: Config,
    exp_id: str,
    study_run: str,
    progress: Progress,
) -> list[str]:
    """Run the cells that are not reused: here, one after the other, or on an executor; then
    wait for those another process was training, and take over any whose process died."""
    if cfg.study.workers > 1 or cfg.study.executor != "local":
        ran, elsewhere = executors.run_parallel(todo, total, cfg, study_run, progress)
    else:
        ran, elsewhere = [], []
        clock = StudyClock(len(todo))
        for task in todo:
            (ran if _run_one(task, total, study_run, progress, clock) else elsewhere).append(task)
        ran = [t.name for t in ran]
    run_here = partial(_run_one, total=total, study_run=study_run, progress=progress)
    return ran + wait_for(elsewhere, total, exp_id, run_here, progress)


def _run_one(
    task: CellTask,
    total: int,
    study_run: str,
    progress: Progress,
    clock: StudyClock | None = None,
) -> bool:
    """Train and evaluate one cell here (or only evaluate it); False when another live process
    has it."""
    started = time.perf_counter()
    try:
        if task.finished_train:  # trained, but its evaluation is missing
            _, metrics = run_evaluate(
                task.config, train_run_id=task.finished_train, parent_run_id=task.finished_train
            )
            what = f"evaluated (train {task.finished_train} reused)"
        else:
            with labelled(f"[{task.index}/{total}] {task.name}"):
                out = run_cell(task.config, parent_run_id=study_run, tuned_from=task.tuned_from)
            metrics = out.metrics
            what = f"trained, best val_acc1 {out.train.best_val_acc1:.4f}"
    except claims.CellTaken as taken:
        progress(f"[{task.index}/{total}] {task.name}: {taken}")
        return False
    lt = metrics.get(schema.test_metric("lt"))
    seconds = time.perf_counter() - started
    progress(
        f"[{task.index}/{total}] {task.name}: {what}"
        + (f", test_lt_acc1 {lt:.4f}" if lt is not None else "")
        + f" ({seconds:.1f}s)"
        + (f"; {clock.done(seconds)}" if clock else "")
    )
    return True


@dataclass
class StudyClock:
    """The study's estimate, updated as its cells finish: the cells left times the mean time
    of the cells trained here so far."""

    left: int
    spent: float = 0.0
    trained: int = 0

    def done(self, seconds: float) -> str:
        self.left, self.spent, self.trained = self.left - 1, self.spent + seconds, self.trained + 1
        if self.left <= 0:
            return "the grid's last cell"
        eta = timedelta(seconds=round(self.left * self.spent / self.trained))
        return f"{self.left} cell{'s' * (self.left != 1)} left, about {eta}"
