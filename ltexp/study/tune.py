"""The tune orchestrator: an Optuna search over one cell's hyper-parameters on the validation
set, as one MLflow run whose trials are its child train runs.

Each trial trains the cell with the values Optuna suggests (a child train run with every param
and per-epoch metric; not registered, never tested); its value is the best validation metric over
its epochs, reported every epoch, so that weak trials are pruned (their runs end KILLED with the
reason). A trial that fails is recorded and the search goes on. The tune run logs the best config
as ``best_config.yaml`` (``ltexp train --preset best_config.yaml`` trains it), the trials as
``trials.csv``, and Optuna's optimisation history and parameter importances. The Optuna study
lives in a database: workers on several machines running the same command against one
PostgreSQL database share the search, and a killed search resumes with the same command.

Like the study (:mod:`ltexp.study.run`), it chains steps (prepare_data, train); no step imports it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import mlflow
import optuna
import sqlalchemy
import yaml
from optuna.visualization import matplotlib as ovm

from ltexp import schema
from ltexp.checkpoint import ensure_folder
from ltexp.config import Config, runtime_keys
from ltexp.errors import LtexpError, RunStopped
from ltexp.steps.prepare_data import run_prepare_data
from ltexp.steps.train import TrainHooks, run_train
from ltexp.tracking import claims, runs
from ltexp.tracking.datasets import find_prepared_run
from ltexp.tracking.queries import ENDED_UNFINISHED, where
from ltexp.training.setup import check_weights, resolve_train
from ltexp.tuning import Dimension, check_objective, check_study_name, parse_space, study_name

log = logging.getLogger(__name__)
OPTUNA_SCHEMA = "ltexp_optuna"  # its tables beside MLflow's in one PostgreSQL database
# a worker's trials beat this often; a trial silent for the grace period is failed (kill -9)
TRIAL_HEARTBEAT_SECONDS = 30
TRIAL_GRACE_SECONDS = 120


@dataclass
class TuneResult:
    """What a search found."""

    run_id: str
    study_name: str
    best_value: float
    best_params: dict[str, Any]
    states: dict[str, int]


def resolve_storage(given: str) -> str:
    """Where the Optuna study lives: ``given``; else the MLflow store's own database (PostgreSQL:
    the same database, in the schema ``ltexp_optuna`` — both use an ``alembic_version`` table;
    sqlite: ``optuna.db`` beside it); else (a tracking server) ``sqlite:///optuna.db`` here."""
    if given:
        return given
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).with_name('optuna.db')}"
    if uri.startswith("postgresql"):
        engine = sqlalchemy.create_engine(uri)
        with engine.begin() as connection:  # IF NOT EXISTS alone still races between workers
            connection.execute(
                sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY}
            )
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {OPTUNA_SCHEMA}"))
        engine.dispose()
        joiner = "&" if "?" in uri else "?"
        return f"{uri}{joiner}options=-csearch_path%3D{OPTUNA_SCHEMA}"
    log.warning(
        "the tracking store is a server: the search is kept in sqlite:///optuna.db here; give "
        "tune_storage=<database URL> to share it between machines"
    )
    return "sqlite:///optuna.db"


def run_tune(
    cfg: Config, parent_run_id: str | None = None, progress: Callable[[str], None] = log.info
) -> TuneResult:
    """Search the configured space for the cell's best validation score (see the module)."""
    t = cfg.tune
    dims = parse_space(t.space)  # every bad input refused before anything exists
    objective = check_objective(t.objective)
    check_weights(cfg, resolve_train(cfg))
    ensure_folder(cfg.runtime.checkpoint_dir)
    name = t.study_name or study_name(cfg, dims, objective)
    check_study_name(name)
    storage_url = resolve_storage(t.tune_storage)
    runs.check_database(storage_url, "tune_storage")
    study = _study(optuna, name, storage_url, t)
    data_run = (
        cfg.train.data_run or find_prepared_run(cfg) or run_prepare_data(cfg, claim_launched=False)
    )
    base = cfg.replace(data_run=data_run, evaluate_after=False, register=False, resume="false")
    tr = cfg.train
    cell = schema.tune_cell(tr.model, tr.loss, tr.train_split)
    exp_id = runs.resolve_experiment(
        cfg.experiment, default=runs.default_experiment(cfg.preset, cfg.data.dataset)
    )
    claims.reap_dead_runs()
    launched = None if parent_run_id else runs.launched_run_id()
    with runs.step_run(
        schema.Step.TUNE,
        experiment_id=exp_id,
        run_id=launched or _unfinished_tune(exp_id, name),
        run_name=schema.tune_run_name(cell),
        parent_run_id=parent_run_id,
        tags={schema.TUNE_CELL: cell, schema.TUNE_STUDY: name},
        description=f"Search of {len(dims)} hyper-parameter(s) of {cell} on the validation set "
        f"({objective}, {t.trials} trials, {t.tune_sampler}, pruner {t.pruner}); Optuna "
        f"study {name}.",
    ) as run:
        tune_run = run.info.run_id
        runs.log_params(
            {
                "dataset": cfg.data.dataset,
                "model": tr.model,
                "loss": tr.loss,
                "train_split": tr.train_split,
                "space": ",".join(t.space),  # as `mlflow run -P space=a,b` logged it
                "objective": objective,
                "trials": t.trials,
                "timeout": t.timeout,
                "tune_sampler": t.tune_sampler,
                "pruner": t.pruner,
                "tune_seed": t.tune_seed,
                "study_name": name,
                "storage": runs.redact(storage_url),
            }
        )
        trial_fn = _objective(base, dims, objective, tune_run, cell, name, progress, t.trials)
        budget = optuna.study.MaxTrialsCallback(
            t.trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        )
        if _counted(optuna, study) < t.trials:
            study.optimize(
                trial_fn,
                timeout=t.timeout,
                callbacks=[budget],
                catch=(LtexpError, ValueError, _Surplus),
            )
        return _log_outcome(optuna, study, base, tune_run, progress)


def _study(optuna: Any, name: str, storage_url: str, t: Any) -> Any:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    with _schema_lock(storage_url):
        storage = optuna.storages.RDBStorage(
            storage_url,
            heartbeat_interval=TRIAL_HEARTBEAT_SECONDS,  # a killed worker's trial is failed,
            grace_period=TRIAL_GRACE_SECONDS,  # and the search goes on
            engine_kwargs={"pool_pre_ping": True},
        )
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1),
        "none": optuna.pruners.NopPruner,
    }[t.pruner]()
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True
    )
    # the first worker draws from the seed; a worker that joins (or resumes) a search draws
    # from another stream, so that two workers do not suggest the same values
    joined = len(study.trials)
    seed = t.tune_seed if joined == 0 else t.tune_seed + 1 + joined + os.getpid() % 100_000
    sampler = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }[t.tune_sampler]()
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    # a trial whose worker was killed has no heartbeat: failed now, not RUNNING forever
    optuna.storages.fail_stale_trials(study)
    return study


@contextlib.contextmanager
def _schema_lock(storage_url: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock while Optuna creates its tables: two workers starting on
    a new database otherwise race in ``CREATE TYPE`` and one dies. sqlite serialises by itself."""
    if not storage_url.startswith("postgresql"):
        yield
        return

    engine = sqlalchemy.create_engine(storage_url)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(
                    sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY}
                )
    finally:
        engine.dispose()


_LOCK_KEY = 0x17E4_0971  # any fixed 64-bit number, the same in every ltexp worker


def _counted(optuna: Any, study: Any) -> int:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=done))


# a trial a worker drew beyond the budget while another drew the last one: closed as FAIL
# at once, never trained, and not counted among the failed trials
SURPLUS = "ltexp_surplus"
WORKER = "ltexp_worker"  # host:pid of the process that runs a trial


class _Surplus(Exception):
    """A trial beyond the budget (see :data:`SURPLUS`)."""


def _ahead(optuna: Any, trial: Any) -> int:
    """Trials numbered before ``trial`` that count or may count toward the budget (finished,
    pruned, running in a live worker): the storage numbers trials atomically, so two workers
    asking at once see different counts, and at most the budget's trials are trained. A trial
    whose worker on this host is gone (killed) does not count: it will be failed and redone."""
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    trials = trial.study.get_trials(deepcopy=False)
    return sum(
        t.number < trial.number
        and (t.state in done or (t.state == optuna.trial.TrialState.RUNNING and _alive(t)))
        for t in trials
    )


def _alive(trial: Any) -> bool:
    """The trial's worker runs: on this host, its process exists; elsewhere, assumed (Optuna's
    heartbeat fails it once it stops)."""
    host, _, pid = str(trial.user_attrs.get(WORKER, "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _objective(
    base: Config,
    dims: list[Dimension],
    objective: str,
    tune_run: str,
    cell: str,
    name: str,
    progress: Callable[[str], None],
    budget: int,
) -> Callable[[Any], float]:
    """One trial: the cell trained with the suggested values, its best ``objective``."""

    def trial_fn(trial: Any) -> float:
        trial.set_user_attr(WORKER, f"{socket.gethostname()}:{os.getpid()}")
        if _ahead(optuna, trial) >= budget:
            # another worker asked for a trial at the same moment and the budget is reached
            # (counted and running trials numbered before this one): close it untrained
            trial.set_user_attr(SURPLUS, True)
            trial.study.stop()
            raise _Surplus(f"trial {trial.number} is beyond the search's {budget} trials")
        values = {d.key: d.suggest(trial) for d in dims}
        cfg = base.replace(**values)
        best = float("-inf")

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            nonlocal best
            value = metrics.get(objective, float("nan"))
            best = max(best, value)
            trial.report(value, epoch)
            if trial.should_prune():
                raise RunStopped(
                    f"pruned at epoch {epoch}: {objective} {value:.4f} is below what the "
                    f"search's other trials reached by then"
                )

        tags = {schema.TUNE_STUDY: name, schema.TRIAL: str(trial.number)}
        run_name = schema.trial_run_name(cell, trial.number)
        hooks = TrainHooks(
            run_name=run_name,
            tags=tags,
            on_epoch=on_epoch,
            trains_once=False,
            trial=f"{name}/{trial.number}",
        )
        try:
            result = run_train(cfg, parent_run_id=tune_run, hooks=hooks)
        except RunStopped as stopped:
            progress(f"trial {trial.number} {_show(values)}: {stopped}")
            _tag_trial(cell, trial.number, name, "PRUNED")
            raise optuna.TrialPruned(str(stopped)) from None
        except LtexpError as e:
            progress(f"trial {trial.number} {_show(values)}: failed: {e}")
            _tag_trial(cell, trial.number, name, "FAIL")
            raise
        _tag_trial(cell, trial.number, name, "COMPLETE", result.run_id)
        progress(f"trial {trial.number} {_show(values)}: {objective} {best:.4f}")
        trial.set_user_attr("run_id", result.run_id)
        return best

    return trial_fn


def _show(values: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )


def _tag_trial(cell: str, number: int, study: str, state: str, run_id: str | None = None) -> None:
    """The trial's run says how the trial ended (Optuna's state, in MLflow)."""
    if run_id is None:
        found = runs.search_all(
            None,
            where(schema.Step.TRAIN, tags={schema.TUNE_STUDY: study, schema.TRIAL: number}),
        )
        run_id = found[0].info.run_id if found else None
    if run_id:
        runs.client().set_tag(run_id, schema.TRIAL_STATE, state)


def _unfinished_tune(exp_id: str, name: str) -> str | None:
    found = runs.search_all(
        [exp_id],
        where(schema.Step.TUNE, tags={schema.TUNE_STUDY: name}, not_status=ENDED_UNFINISHED),
    )
    return found[0].info.run_id if found else None


def best_config(cfg: Config, params: dict[str, Any]) -> dict[str, Any]:
    """The best trial's config as a preset (what ``ltexp train --preset`` reads): the resolved
    config with the best values, without the settings of where it ran."""
    document = cfg.replace(**params).to_dict()
    document.pop("preset")
    skip = runtime_keys() | {"tune"}
    for section in list(document):
        if section in skip:
            document.pop(section)
        elif isinstance(document[section], dict) and section != "losses":
            document[section] = {k: v for k, v in document[section].items() if k not in skip}
    return document


def _log_outcome(
    optuna: Any, study: Any, base: Config, tune_run: str, progress: Callable[[str], None]
) -> TuneResult:
    """The best trial's config, the trials and the plots, on the tune run."""
    states = {s.name: 0 for s in optuna.trial.TrialState}
    for trial in study.get_trials(deepcopy=False):
        if not trial.user_attrs.get(SURPLUS):
            states[trial.state.name] += 1
    try:
        best = study.best_trial
    except ValueError:
        raise LtexpError(
            f"no trial of the search finished ({states['FAIL']} failed, {states['PRUNED']} "
            f"pruned); see the trial runs' ltexp.error"
        ) from None
    mlflow.log_metrics(
        {
            "best_value": best.value,
            "trials_complete": states["COMPLETE"],
            "trials_pruned": states["PRUNED"],
            "trials_failed": states["FAIL"],
        }
    )
    runs.client().set_tag(tune_run, schema.BEST_PARAMS, json.dumps(best.params, sort_keys=True))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        config = best_config(base.replace(data_run=""), best.params)
        (out / schema.BEST_CONFIG_ARTIFACT).write_text(yaml.safe_dump(config, sort_keys=False))
        study.trials_dataframe().to_csv(out / schema.TRIALS_ARTIFACT, index=False)
        _plots(optuna, study, out)
        mlflow.log_artifacts(str(out))
    progress(f"best trial {best.number}: {_show(best.params)}, value {best.value:.4f}")
    return TuneResult(tune_run, study.study_name, best.value, dict(best.params), states)


def _plots(optuna: Any, study: Any, out: Path) -> None:
    """Optuna's optimisation history and parameter importances (importances need at least two
    finished trials whose values differ; left out otherwise, with a warning)."""
    matplotlib.use("Agg")

    for name, draw in (
        (schema.TUNE_HISTORY_FIGURE, ovm.plot_optimization_history),
        (schema.TUNE_IMPORTANCE_FIGURE, ovm.plot_param_importances),
    ):
        try:
            with warnings.catch_warnings():
                # Optuna's notices about its own estimates (too few trials for importances,
                # experimental plots): nothing a user of the figure acts on
                warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
                ax = draw(study)
            ax.figure.tight_layout()
            ax.figure.savefig(out / name, dpi=120)
            plt.close(ax.figure)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            log.warning("%s left out: %s", name, str(e).splitlines()[0] if str(e) else e)
