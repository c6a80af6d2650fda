"""Hand-off between processes: waiting for the cells another process is training, and taking
over those whose process died.

Several studies may share one store (a team's server, ``workers=``, a second terminal). A cell
is claimed by its train run (:mod:`ltexp.tracking.claims`); a study that finds a cell claimed
waits for it here, polling the store, and runs it itself when the claim's process is gone (no
heartbeat) or when a finished training has had no evaluation for :data:`HANDOFF_SECONDS`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from ltexp.study.executors import CellTask
from ltexp.tracking import claims, runs
from ltexp.tracking.questions import finished_cells

POLL_SECONDS = 10.0  # how often a study looks at cells another process is training
# a process that finished training a cell starts its evaluation within seconds; only after this
# long without one is the evaluation taken over
HANDOFF_SECONDS = 120.0

# runs one task here; False when another live process has it
RunHere = Callable[[CellTask], bool]


def evaluation_pending(exp_id: str, train_run_id: str) -> bool:
    """Another process is evaluating the run, or will in a moment (it just finished training)."""
    if claims.live_evaluation(exp_id, train_run_id):
        return True
    ended = (runs.client().get_run(train_run_id).info.end_time or 0) / 1000
    return time.time() - ended < runs.env_seconds("LTEXP_HANDOFF_SECONDS", HANDOFF_SECONDS)


def wait_for(
    tasks: list[CellTask],
    total: int,
    exp_id: str,
    run_here: RunHere,
    progress: Callable[[str], None],
) -> list[str]:
    """Wait until the cells other processes are training are finished and evaluated; a cell
    whose process died (no heartbeat) is reaped and given to ``run_here``. Returns the names of
    the cells run here."""
    pending, done_here = list(tasks), []
    while pending:
        claims.reap_dead_runs([exp_id])
        finished = finished_cells(exp_id)
        still = []
        for task in pending:
            train_id, eval_id = finished.get(task.config_hash, (None, None))
            if train_id and eval_id:
                progress(f"[{task.index}/{total}] {task.name}: done by another process")
            elif claims.live_train_run(exp_id, task.config_hash) or (
                train_id and evaluation_pending(exp_id, train_id)
            ):
                still.append(task)
            else:  # its process died, or it finished without an evaluation: do it here
                retry = dataclasses.replace(task, finished_train=train_id)
                (done_here if run_here(retry) else still).append(task)
        pending = still
        if pending:
            time.sleep(runs.env_seconds("LTEXP_POLL_SECONDS", POLL_SECONDS))
    return [t.name for t in done_here]
