"""Issue 24, the environment as an attacker or a careless user leaves it: unreachable stores and
clusters, unusable database URLs, names that break filters, passwords in log lines, a report or
an aggregate run cut off by kill -9. Each is one line, a non-zero exit, and nothing left behind."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from ltexp.cli import main
from tests.conftest import PG, postgres_reachable, tiny_args


def _count_runs() -> int:
    return len(mlflow.search_runs(search_all_experiments=True, output_format="list"))


def _closed_port() -> int:
    with socket.socket() as s:  # a port nothing listens on: bound, then released
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _store(uri: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """MLflow pointed at ``uri`` (the environment and the process's own setting), in ``folder``."""
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def test_mlflow_s_own_log_lines_carry_no_password() -> None:
    from ltexp.tracking.runs import redact_logs

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    mlflow_logger = logging.getLogger("mlflow")
    mlflow_logger.addHandler(handler)
    try:
        redact_logs()
        logging.getLogger("mlflow.utils.rest_utils").error(
            "API request to %s failed", "http://alice:s3cret@server:5000/api/2.0/runs"
        )
        logging.getLogger("mlflow.store").warning("retrying postgresql://bob:hunter2@db/ml")
    finally:
        mlflow_logger.removeHandler(handler)
    text = stream.getvalue()
    assert "s3cret" not in text and "hunter2" not in text
    assert "http://***@server:5000" in text and "postgresql://***@db/ml" in text


def test_a_tracking_store_on_a_closed_port_is_one_line_within_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"postgresql+psycopg2://ltexp:secret@127.0.0.1:{_closed_port()}/test"
    started = time.monotonic()
    with _store(uri, tmp_path, monkeypatch):
        code = main(["prepare-data", "--preset", "demo"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert (
        "the tracking store 'postgresql+psycopg2://***@127.0.0.1:" in err[0]
        and "cannot be reached" in err[0]
    )
    assert "secret" not in err[0] and time.monotonic() - started < 60


@pytest.mark.postgres
def test_a_tracking_store_whose_database_is_missing_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not postgres_reachable():
        pytest.skip(f"no PostgreSQL reachable at {PG}")
    store = PG.replace("postgresql://", "postgresql+psycopg2://", 1)  # the driver installed
    with _store(store.rsplit("/", 1)[0] + "/no_such_database", tmp_path, monkeypatch):
        code = main(["prepare-data", "--preset", "demo"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no_such_database" in err[0], err
    assert "cannot be reached" in err[0]


def _tune_args(tmp_path: Path) -> list[str]:
    args = ["tune", "--preset", "demo", "--epochs", "1", "--system-metrics", "false"]
    args += ["--checkpoint-dir", str(tmp_path / "ckpt"), "--data-root", str(tmp_path / "data")]
    return [*args, "--space", "lr=loguniform:1e-4:1e-2", "--trials", "1"]


UNUSABLE_STORAGES = {
    "no scheme": "optuna.db",
    "an unknown scheme": "nosuchdb://host/x",
    "a driver not installed": "postgresql+nosuchdriver://host/x",
    "a closed port": f"postgresql+psycopg2://u@127.0.0.1:{_closed_port()}/x",
    "a sqlite file in no folder": "sqlite:////no/such/folder/optuna.db",
}


@pytest.mark.parametrize("storage", UNUSABLE_STORAGES.values(), ids=UNUSABLE_STORAGES)
def test_a_tune_storage_that_is_no_usable_database_is_one_line_and_no_run(
    storage: str, tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    code = main([*_tune_args(tmp_path), "--tune-storage", storage])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "tune_storage" in err[0], err
    assert _count_runs() == 0


def test_a_study_name_that_would_break_a_search_filter_is_refused(
    tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    code = main([*_tune_args(tmp_path), "--study-name", "x'; DROP TABLE studies;--"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "study_name" in err[0], err
    assert _count_runs() == 0


def test_a_search_filter_never_takes_a_quote() -> None:
    from ltexp import schema
    from ltexp.errors import TrackingError
    from ltexp.tracking.queries import where

    assert where(schema.Step.TRAIN, tags={"a": "b"}) == (
        "tags.`ltexp.step` = 'train' and tags.`a` = 'b'"
    )
    with pytest.raises(TrackingError, match="holds a quote"):
        where(schema.Step.TUNE, tags={schema.TUNE_STUDY: "x' or '1'='1"})


def test_a_ray_cluster_that_does_not_answer_is_one_line_and_no_run(
    tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("ray", reason="the optional ray extra: pip install 'ltexp[ray]'")
    started = time.monotonic()
    args = ["main", *tiny_args(tmp_path), "--executor", "ray"]
    code = main([*args, "--ray-address", f"127.0.0.1:{_closed_port()}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not answer" in err[0], err
    assert _count_runs() == 0 and time.monotonic() - started < 60


def test_a_report_cut_off_while_it_is_written_leaves_the_previous_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from ltexp.report import folder

    out = tmp_path / "reports" / "study"
    built = tmp_path / "built"
    built.mkdir()
    for name in ("report.md", "runs.csv", "fig.png"):
        (built / name).write_text(f"new {name}")
    folder.publish(sorted(built.iterdir()), out)
    before = {p.name: p.read_text() for p in out.iterdir()}
    real, copied = shutil.copyfile, []

    def killed_after_one(src, dst):
        if copied:
            raise KeyboardInterrupt  # as kill -9 would stop it, mid-way
        copied.append(dst)
        return real(src, dst)

    for name in ("report.md", "runs.csv", "fig.png"):
        (built / name).write_text(f"newer {name}")
    monkeypatch.setattr(folder.shutil, "copyfile", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        folder.publish(sorted(built.iterdir()), out)
    assert {p.name: p.read_text() for p in out.iterdir()} == before  # whole, and the old one
    monkeypatch.setattr(folder.shutil, "copyfile", real)
    folder.publish(sorted(built.iterdir()), out)
    assert (out / "report.md").read_text() == "newer report.md"
    assert sorted(p.name for p in out.parent.iterdir()) == ["study"]  # nothing left beside it


def _publish_many(built: str, out: str, times: int) -> None:
    from ltexp.report import folder

    files = sorted(Path(built).iterdir())
    for _ in range(times):
        folder.publish(files, Path(out))


def test_two_reports_published_at_once_both_land_whole(tmp_path: Path) -> None:
    """Two studies that end together publish the same report folder: each waits for the other,
    neither removes the other's files mid-way (this failed as 'No such file or directory')."""
    import multiprocessing

    out = tmp_path / "reports" / "study"
    builts = []
    for who in ("a", "b"):
        built = tmp_path / f"built-{who}"
        built.mkdir()
        for name in ("report.md", "runs.csv", "fig.png", "fig.pdf"):
            (built / name).write_text(f"{who} {name}")
        builts.append(built)
    fork = multiprocessing.get_context("fork")  # the test's imports are already loaded
    procs = [fork.Process(target=_publish_many, args=(str(b), str(out), 40)) for b in builts]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    texts = {p.name: p.read_text() for p in out.iterdir()}
    assert sorted(texts) == ["fig.pdf", "fig.png", "report.md", "runs.csv"]
    assert len({t.split()[0] for t in texts.values()}) == 1  # one whole report, not a mix
    assert sorted(p.name for p in out.parent.iterdir()) == ["study"]


def test_an_aggregate_run_left_running_by_a_killed_process_is_failed_by_the_next(
    trained, tmp_path: Path
) -> None:
    from ltexp import schema
    from ltexp.config import build_config
    from ltexp.steps.aggregate import run_aggregate

    _, result, _ = trained
    exp_id = mlflow.get_run(result.run_id).info.experiment_id
    client = mlflow.MlflowClient()
    dead = client.create_run(
        exp_id,
        tags={
            schema.STEP: "aggregate",
            schema.HOST: socket.gethostname(),
            schema.PID: str(_dead_pid()),
        },
    )
    name = client.get_experiment(exp_id).name
    run_aggregate(build_config("demo", {"experiment": name, "output_dir": str(tmp_path / "r")}))
    left = client.get_run(dead.info.run_id)
    assert left.info.status == "FAILED" and "died while running" in left.data.tags[schema.ERROR]


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_an_artifact_store_on_a_full_disk_is_one_line(
    tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24: 15 tracebacks and 588 lines before ltexp's own line. The step's run ends FAILED
    with the reason (it ran until the disk was full); the command prints one line, exit 1."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/artifacts/manifest.json")

    monkeypatch.setattr(mlflow, "log_artifact", full)
    monkeypatch.setattr(mlflow, "log_dict", full)
    monkeypatch.setattr(mlflow, "log_artifacts", full)
    code = main(["prepare-data", *tiny_args(tmp_path)[:2], "--data-root", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "No space left on device (/artifacts/manifest.json); free space there" in err[0]
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED" and "No space left" in run.data.tags["ltexp.error"]


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ltexp", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_read_only_sqlite_store_is_one_line(tmp_path: Path) -> None:
    """Issue 39: two tracebacks, then an 'autoflush' line that never said read-only."""
    store = tmp_path / "mlflow.db"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    data = ["prepare-data", *tiny_args(tmp_path)[:2], "--data-root", str(tmp_path / "d")]
    first = _cli(data, env, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    if subprocess.run(["chattr", "+i", str(store)], capture_output=True).returncode:
        pytest.fail("chattr +i is needed to make the store read-only for root")
    try:
        done = _cli([*data, "--split-seed", "3"], env, tmp_path)
    finally:
        subprocess.run(["chattr", "-i", str(store)], check=True)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, err
    assert "is read-only (attempt to write a readonly database)" in err[0]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_store_and_artifacts_on_a_full_disk_are_one_line(tmp_path: Path) -> None:
    """Issue 39: a 1.2 MB disk under the store and artifacts gave 15 tracebacks and 587 lines."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode:
        pytest.fail(f"mounting a small tmpfs needs root here: {mounted.stderr.strip()}")
    try:
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{disk / 'mlflow.db'}"}
        done = _cli(["train", *tiny_args(tmp_path), "--epochs", "1"], env, disk)
        lines = [line for line in done.stderr.strip().splitlines() if "system_metrics" not in line]
        assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
        assert "is on a full disk" in lines[0] and "free space there" in lines[0]
        assert "Traceback" not in done.stderr
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_bare_postgresql_uri_without_its_driver_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 39: SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which ltexp's check replaced
    by psycopg2 and MLflow then died on."""
    import importlib.util

    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg 3 is installed here: a bare postgresql:// works")
    with _store(f"{PG}", tmp_path, monkeypatch):
        code = main(["prepare-data", *tiny_args(tmp_path)[:2]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs the database driver psycopg" in err[0], err


def test_a_full_report_disk_names_the_folder_and_leaves_no_partial_files(tmp_path: Path) -> None:
    """Issue 39: the error named a temporary file and left .r.incoming-<pid>/ behind."""
    from ltexp.errors import HostError
    from ltexp.report.folder import publish

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode:
        pytest.fail(f"mounting a small tmpfs needs root here: {mounted.stderr.strip()}")
    try:
        out = disk / "r"
        small = tmp_path / "report.md"
        small.write_text("the previous report\n")
        publish([small], out)
        big = tmp_path / "fig.png"
        big.write_bytes(os.urandom(400 * 1024))
        with pytest.raises(HostError, match=f"cannot write the report to '{out}'") as err:
            publish([small, big], out)
        assert "No space left on device" in str(err.value)
        assert sorted(p.name for p in disk.iterdir()) == ["r"]  # no .r.incoming-<pid>/
        assert (out / "report.md").read_text() == "the previous report\n"
    finally:
        subprocess.run(["umount", str(disk)], check=True)
