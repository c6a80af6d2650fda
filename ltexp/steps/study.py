"""The study (the ``main`` entry point): prepare_data → every cell of the grid → aggregate, as
child runs of one parent run. Re-running it reuses finished cells and resumes unfinished ones.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from ltexp.config import Config
from ltexp.data.splits import TRAINING_SETS
from ltexp.errors import ConfigError, unknown_name_error
from ltexp.losses import LOSSES
from ltexp.models import list_models, model_spec
from ltexp.report.build import Grid
from ltexp.steps.data import find_prepared_run
from ltexp.steps.train import default_experiment, plan_train
from ltexp.tracking import runs, schema

log = logging.getLogger(__name__)
# Study settings that change how the study runs, not its results.
RUNTIME_STUDY_KEYS = ("workers", "executor", "ray_address", "force")


@dataclass(frozen=True)
class Cell:
    """One (model, loss, training set, seed) of the grid."""

    model: str
    loss: str
    train_split: str
    seed: int

    @property
    def name(self) -> str:
        return schema.run_name(self.model, self.loss, self.train_split, self.seed)

    def config(self, base: Config) -> Config:
        """``base`` with this cell's model, loss, training set and seed."""
        cfg = copy.deepcopy(base)
        cfg.train.model, cfg.train.loss = self.model, self.loss
        cfg.train.train_split, cfg.train.seed = self.train_split, self.seed
        return cfg


@dataclass
class StudyResult:
    """What a study did."""

    run_id: str
    report_dir: Path | None
    reused: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)


def grid_cells(cfg: Config) -> list[Cell]:
    """Every cell of the configured grid; all unknown names are reported at once."""
    s = cfg.study
    problems = []
    for m in s.models:
        try:
            model_spec(m)
        except ConfigError:
            problems.append(str(unknown_name_error("model", m, [*list_models(), "timm:<name>"])))
    problems += [
        str(unknown_name_error("loss", lo, list(LOSSES))) for lo in s.losses if lo not in LOSSES
    ]
    problems += [
        str(unknown_name_error("train_split", sp, list(TRAINING_SETS)))
        for sp in s.train_splits
        if sp not in TRAINING_SETS
    ]
    if problems:
        raise ConfigError("; ".join(problems))
    if not (s.models and s.losses and s.train_splits and s.seeds):
        raise ConfigError(
            "the grid is empty: models, losses, train_splits and seeds each need at least one value"
        )
    return [Cell(*c) for c in itertools.product(s.models, s.losses, s.train_splits, s.seeds)]


def study_hash(cfg: Config) -> str:
    """Identity of a study: its resolved config without runtime-only settings."""
    values = cfg.to_dict()
    values["study"] = {k: v for k, v in values["study"].items() if k not in RUNTIME_STUDY_KEYS}
    for key in ("device", "checkpoint_dir", "resume", "system_metrics", "num_threads"):
        values["train"].pop(key, None)
    values["data"].pop("data_root", None)
    return runs.config_hash(values)


def finished_cells(experiment_id: str) -> dict[str, tuple[str, str | None]]:
    """config hash → (finished train run, its finished evaluate run or None), this code only."""
    version = runs.code_version()
    trains = runs.search_all(
        [experiment_id],
        f"{schema.search_step(schema.Step.TRAIN)} and "
        f"attributes.status = 'FINISHED' and "
        f"tags.`{schema.CODE_VERSION}` = '{version}'",
    )
    evals = runs.search_all(
        [experiment_id],
        f"{schema.search_step(schema.Step.EVALUATE)} and attributes.status = 'FINISHED'",
    )
    eval_of = {}
    for run in evals:
        train_id = run.data.params.get(schema.TRAIN_RUN_ID)
        if train_id and float(run.data.params.get("tau", "0") or 0) == 0:
            eval_of.setdefault(train_id, run.info.run_id)
    out: dict[str, tuple[str, str | None]] = {}
    for run in trains:  # newest first: keep the latest per hash
        h = run.data.tags.get(schema.CONFIG_HASH)
        if h and h not in out:
            out[h] = (run.info.run_id, eval_of.get(run.info.run_id))
    return out


def run_study(cfg: Config, parent_run_id: str | None = None) -> StudyResult:
    """Run the whole study; return the parent run and the report folder."""
    cells = grid_cells(cfg)
    cfg.experiment = runs.experiment_name(cfg.experiment, default_experiment(cfg))
    exp_id = runs.resolve_experiment(cfg.experiment, default=cfg.experiment)
    runs.reap_dead_runs([exp_id])
    shash = study_hash(cfg)
    launched = None if parent_run_id else runs.launched_run_id()
    main_id = launched or _unfinished_main(exp_id, shash)
    s = cfg.study
    with runs.step_run(
        schema.Step.MAIN,
        experiment_id=exp_id,
        run_id=main_id,
        run_name=f"study-{cfg.experiment}",
        parent_run_id=parent_run_id,
        tags={schema.CONFIG_HASH: shash},
        description=f"Study of {len(cells)} cells: {len(s.models)} models × "
        f"{len(s.losses)} losses × {len(s.train_splits)} training "
        f"sets × {len(s.seeds)} seeds on {cfg.data.dataset}.",
    ) as run:
        study_run = run.info.run_id
        if main_id is None:
            runs.log_params(
                {
                    "models": ",".join(s.models),
                    "losses": ",".join(s.losses),
                    "train_splits": ",".join(s.train_splits),
                    "seeds": ",".join(map(str, s.seeds)),
                    "preset": cfg.preset,
                    "dataset": cfg.data.dataset,
                    "n_cells": len(cells),
                    "epochs": cfg.train.epochs,
                }
            )
        # the data, once, before any cell (and before any fan-out to workers)
        if not cfg.train.data_run:
            cfg.train.data_run = find_prepared_run(cfg.data) or _prepare(cfg, study_run)
        done = {} if s.force else finished_cells(exp_id)
        todo, result = [], StudyResult(study_run, None)
        for i, cell in enumerate(cells, start=1):
            cell_cfg = cell.config(cfg)
            chash = plan_train(cell_cfg, study_run).config_hash
            train_id, eval_id = done.get(chash, (None, None))
            if train_id and eval_id:
                print(
                    f"[{i}/{len(cells)}] {cell.name}: reused (train {train_id}, "
                    f"evaluate {eval_id})",
                    flush=True,
                )
                result.reused.append(cell.name)
                continue
            todo.append((i, cell, cell_cfg, train_id))
        _run_cells(todo, len(cells), cfg, study_run, result)
        from ltexp.steps.aggregate import run_aggregate

        grid = Grid(s.models, s.losses, s.train_splits, [str(x) for x in s.seeds])
        report = run_aggregate(cfg, grid=grid, parent_run_id=study_run)
        result.report_dir = report.output_dir
        mlflow.log_metrics({"cells_reused": len(result.reused), "cells_run": len(result.ran)})
        return result


def _prepare(cfg: Config, study_run: str) -> str:
    from ltexp.steps.prepare_data import run_prepare_data

    return run_prepare_data(cfg, parent_run_id=study_run)


def _unfinished_main(exp_id: str, shash: str) -> str | None:
    found = runs.search_all(
        [exp_id],
        f"{schema.search_step(schema.Step.MAIN)} and "
        f"tags.`{schema.CONFIG_HASH}` = '{shash}' and "
        f"attributes.status != 'FINISHED' and "
        f"attributes.status != 'RUNNING'",
    )
    return found[0].info.run_id if found else None


def _run_cells(todo: list, total: int, cfg: Config, study_run: str, result: StudyResult) -> None:
    """Run the cells that are not reused: here, one after the other, or on an executor."""
    if cfg.study.workers > 1 or cfg.study.executor != "local":
        from ltexp.steps.executors import run_parallel

        run_parallel(todo, total, cfg, study_run, result)
        return
    from ltexp.steps.evaluate import run_evaluate
    from ltexp.steps.train import run_train

    for i, cell, cell_cfg, finished_train in todo:
        started = time.perf_counter()
        if finished_train:  # trained, but its evaluation is missing
            _, metrics = run_evaluate(
                cell_cfg, train_run_id=finished_train, parent_run_id=finished_train
            )
            what = f"evaluated (train {finished_train} reused)"
        else:
            out = run_train(cell_cfg, parent_run_id=study_run)
            metrics = (
                runs.client().get_run(out.evaluate_run_id).data.metrics
                if out.evaluate_run_id
                else {}
            )
            what = f"trained, best val_acc1 {out.best_val_acc1:.4f}"
        lt = metrics.get(schema.test_metric("lt"))
        print(
            f"[{i}/{total}] {cell.name}: {what}"
            + (f", test_lt_acc1 {lt:.4f}" if lt is not None else "")
            + f" ({time.perf_counter() - started:.1f}s)",
            flush=True,
        )
        result.ran.append(cell.name)
