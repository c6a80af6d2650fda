"""Who is running what: runs of dead processes reaped, cells claimed before they are trained.

A live ltexp process refreshes the heartbeat tag of each run it has open
(:func:`ltexp.tracking.runs.step_run`). A RUNNING run whose process is gone from this host, or whose
heartbeat is older than the stale limit on any host, is dead: it is marked FAILED with the reason
and its work can be taken over. Two processes (two studies, workers, Ray tasks, on any hosts) that
want to train the same cell both create its run; the one created first keeps it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import mlflow
from mlflow.entities import Run, RunStatus

from ltexp import schema
from ltexp.cells import code_version
from ltexp.errors import TrackingError
from ltexp.tracking.queries import FINISHED, RUNNING, where
from ltexp.tracking.runs import (
    STALE_SECONDS,
    client,
    env_seconds,
    pid_alive,
    process_tags,
    search_all,
    step_run,
)


def dead_reason(run: Run, now: float | None = None) -> str | None:
    """Why a RUNNING ltexp run has no live process behind it, or None when it may have one: its
    process is gone from this host, or (any host) its heartbeat is older than the stale limit
    (``LTEXP_STALE_SECONDS``, default :data:`STALE_SECONDS`)."""
    tags = run.data.tags
    host, pid = tags.get(schema.HOST), tags.get(schema.PID, "")
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) != os.getpid() and not pid_alive(int(pid)):
            return f"process {pid} on {host} died while running"
        return None
    try:
        beat = float(tags.get(schema.HEARTBEAT, ""))
    except ValueError:
        return None  # not an ltexp run, or one that never said how to tell
    age = (now or time.time()) - beat
    if age > env_seconds("LTEXP_STALE_SECONDS", STALE_SECONDS):
        return f"no heartbeat from process {pid} on {host} for {age:.0f} s: taken for dead"
    return None


def reap_dead_runs(experiment_ids: list[str] | None = None) -> list[str]:
    """Mark FAILED, with the reason, the ltexp runs left RUNNING by dead processes (see
    :func:`dead_reason`), in ``experiment_ids`` (default: every experiment)."""
    reaped = []
    for run in search_all(experiment_ids, where(status=RUNNING)):
        reason = dead_reason(run)
        if reason is None or schema.STEP not in run.data.tags:
            continue
        c = client()
        c.set_tag(run.info.run_id, schema.ERROR, reason)
        c.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        reaped.append(run.info.run_id)
    return reaped


class CellTaken(TrackingError):
    """Another live process is training this cell (exit status 3: not a failure)."""

    exit_code = 3

    def __init__(self, message: str, winner: str) -> None:
        super().__init__(message)
        self.winner = winner


def claim_run(
    experiment_id: str,
    config_hash: str,
    *,
    run_name: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
    run_id: str | None = None,
    finished_counts: bool = False,
    step: schema.Step = schema.Step.TRAIN,
) -> str:
    """Create (or take, with ``run_id``) the train run of a cell, then make sure no other live
    process trains the same cell: of the live train runs of that config, the one created first
    wins (ties: the smaller run id), whatever host or store; a loser's new run is deleted.

    Args:
        finished_counts: a FINISHED run of the config by this code also has the cell (a study's
            cells are trained once; a plain ``ltexp train`` may train a config again).
        step: the step of the run (a decouple run is claimed the same way).

    Raises:
        CellTaken: another live run has the cell (it names the run and its host).
    """
    c = client()
    created = run_id is None
    if created:
        all_tags = {schema.STEP: step.value, **process_tags(), **tags}
        if parent_run_id:
            all_tags[schema.PARENT_RUN] = parent_run_id
        run_id = c.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id
    rivals = search_all(
        [experiment_id],
        where(step, status=RUNNING, tags={schema.CONFIG_HASH: config_hash}),
    )
    live = [r for r in rivals if r.info.run_id == run_id or dead_reason(r) is None]
    first = min(live, key=lambda r: (r.info.start_time, r.info.run_id), default=None)
    done = finished_run(experiment_id, config_hash, step) if finished_counts else None
    if done is None and (first is None or first.info.run_id == run_id):
        return run_id
    if created:
        c.delete_run(run_id)
    if done is not None:
        raise CellTaken(f"run {done} has trained this cell already; its result is reused", done)
    host = first.data.tags.get(schema.HOST, "another host")
    raise CellTaken(
        f"run {first.info.run_id} ({host}, pid {first.data.tags.get(schema.PID, '?')}) is "
        f"training this cell already; its result will be reused",
        first.info.run_id,
    )


def finished_run(
    experiment_id: str, config_hash: str, step: schema.Step = schema.Step.TRAIN
) -> str | None:
    """The latest FINISHED run of ``step`` with this config hash, by this code."""
    found = search_all(
        [experiment_id],
        where(
            step,
            status=FINISHED,
            tags={schema.CONFIG_HASH: config_hash, schema.CODE_VERSION: code_version()},
        ),
    )
    return found[0].info.run_id if found else None


def live_train_run(experiment_id: str, config_hash: str) -> str | None:
    """A RUNNING train run of this config with a live process behind it, if any."""
    return _live(experiment_id, schema.Step.TRAIN, {schema.CONFIG_HASH: config_hash})


def live_evaluation(experiment_id: str, train_run_id: str) -> str | None:
    """A RUNNING evaluate run of ``train_run_id`` with a live process behind it, if any."""
    return _live(experiment_id, schema.Step.EVALUATE, {schema.PARENT_RUN: train_run_id})


def _live(experiment_id: str, step: schema.Step, tags: dict[str, str]) -> str | None:
    running = search_all([experiment_id], where(step, status=RUNNING, tags=tags))
    return next((r.info.run_id for r in running if dead_reason(r) is None), None)


@contextlib.contextmanager
def claimed_run(
    step: schema.Step,
    experiment_id: str,
    identity: dict[str, Any],
    config_hash: str,
    *,
    run_name: str,
    tags: dict[str, str],
    parent_run_id: str | None,
    launched: str | None,
    once: bool,
    description: str,
    resume_id: str | None = None,
    system_metrics: bool = False,
    wrapper: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """The run of a cell's train or decouple step, open while inside: ``resume_id``, else a run
    claimed for the cell (:func:`claim_run`; ``launched``: the ``mlflow run`` run to take;
    ``once``: a FINISHED run of the cell also has it), tagged with the cell's identity, and
    closed with the right status (:func:`ltexp.tracking.runs.step_run`, which also links
    ``wrapper``).

    Raises:
        CellTaken: another live process has the cell (or, with ``once``, has trained it).
    """
    all_tags = {
        schema.CONFIG_HASH: config_hash,
        schema.IDENTITY: json.dumps(identity, sort_keys=True, default=str),
        **tags,
    }
    run_id = resume_id or claim_run(
        experiment_id,
        config_hash,
        run_name=run_name,
        tags=all_tags,
        parent_run_id=parent_run_id,
        run_id=launched,
        finished_counts=once,
        step=step,
    )
    with step_run(
        step,
        experiment_id=experiment_id,
        run_id=run_id,
        run_name=run_name,
        parent_run_id=parent_run_id,
        tags=all_tags,
        description=description,
        system_metrics=system_metrics,
        wrapper=wrapper,
    ) as run:
        yield run
