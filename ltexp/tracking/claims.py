"""Who is running what: runs of dead processes reaped, cells claimed before they are trained.

A live ltexp process refreshes the heartbeat tag of each run it has open
(:func:`ltexp.tracking.runs.step_run`). A RUNNING run whose process is gone from this host, or whose
heartbeat is older than the stale limit on any host, is dead: it is marked FAILED with the reason
and its work can be taken over. Two processes (two studies, workers, Ray tasks, on any hosts) that
want to train the same cell both create its run; the one created first keeps it.
"""

from __future__ import annotations

import os
import socket
import time

from mlflow.entities import Run, RunStatus

from ltexp.errors import TrackingError
from ltexp.tracking import schema
from ltexp.tracking.runs import (
    STALE_SECONDS,
    client,
    env_seconds,
    pid_alive,
    process_tags,
    search_all,
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
    for run in search_all(experiment_ids, "attributes.status = 'RUNNING'"):
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
        f"{schema.search_step(step)} and tags.`{schema.CONFIG_HASH}` = "
        f"'{config_hash}' and attributes.status = 'RUNNING'",
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
    where = first.data.tags.get(schema.HOST, "another host")
    raise CellTaken(
        f"run {first.info.run_id} ({where}, pid {first.data.tags.get(schema.PID, '?')}) is "
        f"training this cell already; its result will be reused",
        first.info.run_id,
    )


def finished_run(
    experiment_id: str, config_hash: str, step: schema.Step = schema.Step.TRAIN
) -> str | None:
    """The latest FINISHED run of ``step`` with this config hash, by this code."""
    from ltexp.cells import code_version

    found = search_all(
        [experiment_id],
        f"{schema.search_step(step)} and tags.`{schema.CONFIG_HASH}` = "
        f"'{config_hash}' and attributes.status = 'FINISHED' and "
        f"tags.`{schema.CODE_VERSION}` = '{code_version()}'",
    )
    return found[0].info.run_id if found else None


def live_train_run(experiment_id: str, config_hash: str) -> str | None:
    """A RUNNING train run of this config with a live process behind it, if any."""
    return _live(
        experiment_id,
        f"{schema.search_step(schema.Step.TRAIN)} and tags.`{schema.CONFIG_HASH}` = "
        f"'{config_hash}'",
    )


def live_evaluation(experiment_id: str, train_run_id: str) -> str | None:
    """A RUNNING evaluate run of ``train_run_id`` with a live process behind it, if any."""
    return _live(
        experiment_id,
        f"{schema.search_step(schema.Step.EVALUATE)} and "
        f"tags.`{schema.PARENT_RUN}` = '{train_run_id}'",
    )


def _live(experiment_id: str, filter_string: str) -> str | None:
    running = search_all([experiment_id], f"{filter_string} and attributes.status = 'RUNNING'")
    return next((r.info.run_id for r in running if dead_reason(r) is None), None)
