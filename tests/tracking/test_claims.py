"""Dead runs reaped (this host by pid, any host by heartbeat age) and cells claimed once."""

from __future__ import annotations

import os
import socket
import time

import mlflow
import pytest

from ltexp import schema
from ltexp.tracking import claims, runs


def _run(exp: str, host: str, pid: str, beat: float | None = None, **tags: str) -> str:
    all_tags = {schema.STEP: "train", schema.HOST: host, schema.PID: pid, **tags}
    if beat is not None:
        all_tags[schema.HEARTBEAT] = f"{beat:.0f}"
    return runs.client().create_run(exp, tags=all_tags).info.run_id


def test_dead_runs_are_reaped_with_the_reason(
    tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LTEXP_STALE_SECONDS", "300")
    exp = runs.experiment_id("e")
    here = socket.gethostname()
    dead = _run(exp, here, "999999999")
    alive = _run(exp, here, str(os.getpid()))
    # a host that stopped sending heartbeats ten minutes ago, and one that is still beating
    lost = _run(exp, "gpu-node-7", "4242", beat=time.time() - 600)
    beating = _run(exp, "gpu-node-8", "4243", beat=time.time() - 30)
    foreign = runs.client().create_run(exp).info.run_id  # not an ltexp run: left alone
    assert sorted(claims.reap_dead_runs()) == sorted([dead, lost])
    assert "process 999999999" in mlflow.get_run(dead).data.tags[schema.ERROR]
    reason = mlflow.get_run(lost).data.tags[schema.ERROR]
    assert "no heartbeat from process 4242 on gpu-node-7" in reason
    for run_id in (alive, beating, foreign):
        assert mlflow.get_run(run_id).info.status == "RUNNING"


def test_the_first_live_claim_wins_and_the_loser_leaves_no_run(tracking: str) -> None:
    exp = runs.experiment_id("e")
    tags = {schema.CONFIG_HASH: "h"}
    first = claims.claim_run(exp, "h", run_name="cell", tags=tags)
    with pytest.raises(claims.CellTaken, match=first) as taken:
        claims.claim_run(exp, "h", run_name="cell", tags=tags)
    assert taken.value.winner == first and taken.value.exit_code == 3
    visible = runs.search_all([exp])
    assert [r.info.run_id for r in visible] == [first]  # the loser's run was deleted
    assert claims.live_train_run(exp, "h") == first
    # another config is another cell
    assert claims.claim_run(exp, "other", run_name="cell", tags={schema.CONFIG_HASH: "other"})


def test_a_dead_claim_is_taken_over(tracking: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LTEXP_STALE_SECONDS", "300")
    exp = runs.experiment_id("e")
    stale = _run(exp, "gone-host", "1", beat=time.time() - 3600, **{schema.CONFIG_HASH: "h"})
    assert claims.live_train_run(exp, "h") is None
    mine = claims.claim_run(exp, "h", run_name="cell", tags={schema.CONFIG_HASH: "h"})
    assert mine != stale
