"""Faults survived, nothing lost: kills, tracking-server outages, full disks, concurrent writers,
authentication, secrets. Each test injects a real fault into real processes (CPU, small models).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from ltexp import schema
from ltexp.checkpoint import LAST
from tests.conftest import TrackingServer, step_counts, tiny_args, tiny_overrides

pytestmark = pytest.mark.slow
DEMO_EXPERIMENT = ["--preset", "demo", "--experiment", "demo-digits"]
EPOCHS = 5


def _train_cmd(tmp_path: Path, **extra: object) -> list[str]:
    return [sys.executable, "-m", "ltexp", "train", *tiny_args(tmp_path, **extra)]


def _env(uri: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, **extra}


def _train_runs(uri: str) -> list:
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return [r for r in client.search_runs(ids) if r.data.tags.get(schema.STEP) == "train"]


def _start_training(
    tmp_path: Path, env: dict[str, str], capture: bool = True, **extra: object
) -> subprocess.Popen:
    """``ltexp train`` in the background; with ``capture``, read its stderr by communicate().

    Ctrl-C reaches it as from a terminal: a test run started in the background by a shell
    without job control (``nohup … &``) inherits SIGINT ignored, and Python then never turns
    it into KeyboardInterrupt."""
    return subprocess.Popen(
        _train_cmd(tmp_path, **extra),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
        text=True,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _outcome(uri: str, ckpt: Path) -> tuple[dict, dict]:
    """(metric histories, final weights) of the only train run; it must be FINISHED."""
    (run,) = _train_runs(uri)
    assert run.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    hist = {
        k: [
            (m.step, m.value)
            for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)
        ]
        for k in ("train_loss", "train_acc1", "val_loss", "val_acc1", "val_tail_acc1")
    }
    weights = torch.load(ckpt / run.info.run_id / LAST, weights_only=True)["model"]
    return hist, weights


def _wait_for_epoch(
    ckpt: Path, epoch: int, proc: subprocess.Popen | None = None, timeout: float = 180
) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"training exited ({proc.returncode}) before epoch {epoch}")
        for path in ckpt.glob(f"*/{LAST}"):
            try:
                if torch.load(path, weights_only=True)["epoch"] >= epoch:
                    return
            except Exception:  # noqa: BLE001 - being replaced right now: look again
                pass
        time.sleep(0.02)
    raise TimeoutError(f"no checkpoint of epoch {epoch}")


# --- kill -9 of training, at three points ------------------------------------------------------

TRAIN = {"loss": "seql", "epochs": EPOCHS, "train_split": "balanced", "evaluate_after": "false"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    tmp = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    subprocess.run(
        _train_cmd(tmp, **TRAIN), env=_env(uri), cwd=tmp, check=True, capture_output=True
    )
    return _outcome(uri, tmp / "ckpt")


@pytest.mark.parametrize("point", ["first-epoch", "mid-training", "last-epoch"])
def test_kill_minus_9_then_same_command_equals_uninterrupted(
    point: str, tmp_path: Path, uninterrupted
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _start_training(tmp_path, _env(uri), capture=False, **TRAIN)
    ckpt = tmp_path / "ckpt"
    if point == "first-epoch":  # before any checkpoint: the run starts over inside itself
        deadline = time.time() + 120
        while not list(ckpt.glob("*/.lock")) and time.time() < deadline:
            time.sleep(0.02)
    else:
        _wait_for_epoch(ckpt, 2 if point == "mid-training" else EPOCHS - 1, proc)
        time.sleep(0.15)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (killed,) = _train_runs(uri)
    assert killed.info.status == "RUNNING"  # until the next ltexp command reaps it
    subprocess.run(
        _train_cmd(tmp_path, **TRAIN), env=_env(uri), cwd=tmp_path, check=True, capture_output=True
    )
    hist, weights = _outcome(uri, ckpt)
    ref_hist, ref_weights = uninterrupted
    assert hist == ref_hist  # each epoch logged exactly once, with the same values
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    versions = mlflow.MlflowClient().search_model_versions(
        "name = 'ltexp-digits-tiny_cnn-seql-balanced'"
    )
    assert len(versions) == 1
    assert not [
        r
        for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
        if r.info.status == "RUNNING"
    ]


# --- the study killed between cells ------------------------------------------------------------


def test_study_killed_between_cells(tmp_path: Path) -> None:
    grid = {"models": "tiny_cnn", "losses": "ce,bs", "train_splits": "lt", "epochs": 2}
    args = [sys.executable, "-m", "ltexp", "main"]
    for k, v in tiny_overrides(tmp_path, **grid).items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        args,
        env=_env(uri),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    while not proc.stdout.readline().startswith("[1/2]"):
        pass
    proc.send_signal(signal.SIGKILL)  # the first cell is done, the second not started
    proc.wait()
    out = subprocess.run(
        args, env=_env(uri), cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    assert "[1/2] tiny_cnn-ce-lt-s42: reused" in out
    assert step_counts(uri) == {
        "main": 1,
        "prepare_data": 1,
        "train": 2,
        "evaluate": 2,
        "aggregate": 1,
    }
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert all(r.info.status == "FINISHED" for r in runs)


# --- the tracking server goes away ---------------------------------------------------------------

FAST_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def test_server_outage_mid_run_loses_no_metric(
    sqlite_server: TrackingServer, tmp_path: Path
) -> None:
    extra = {"epochs": 8, "train_split": "balanced", "evaluate_after": "false"}
    proc = _start_training(tmp_path, _env(sqlite_server.uri, **FAST_RETRIES), **extra)
    _wait_for_epoch(tmp_path / "ckpt", 2, proc)
    sqlite_server.stop()
    _wait_for_epoch(tmp_path / "ckpt", 4, proc)  # training goes on while the server is down
    time.sleep(1)
    sqlite_server.start()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "Retrying" in err  # the outage was noticed and retried, with a warning
    (run,) = _train_runs(sqlite_server.uri)
    assert run.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    for metric in ("train_loss", "val_acc1", "lr"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        assert sorted(steps) == list(range(1, 9)), metric


def test_server_that_never_comes_back_fails_clearly_then_resumes(
    sqlite_server: TrackingServer, tmp_path: Path
) -> None:
    extra = {"epochs": 4, "train_split": "balanced", "evaluate_after": "false"}
    env = _env(
        sqlite_server.uri,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
    )
    proc = _start_training(tmp_path, env, **extra)
    _wait_for_epoch(tmp_path / "ckpt", 1, proc)
    sqlite_server.stop()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("ltexp train: error:") and "tracking server" in last, last
    # the server comes back: the same command resumes and delivers everything
    sqlite_server.start()
    subprocess.run(
        _train_cmd(tmp_path, **extra),
        env=_env(sqlite_server.uri),
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    (run,) = _train_runs(sqlite_server.uri)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_acc1")]
    assert sorted(steps) == [1, 2, 3, 4]


# --- a checkpoint that cannot be written ---------------------------------------------------------


def test_unwritable_checkpoint_location_fails_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(
        _train_cmd(tmp_path, epochs=1, checkpoint_dir=str(blocker / "ckpt")),
        env=_env(uri),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("ltexp train: error:")
    assert blocker.read_text() == "x"


# --- concurrent writers -------------------------------------------------------------------------


EPOCHS_8 = 2


def _eight_trainings(tmp_path: Path, uri: str) -> None:
    env = _env(uri)
    # the store, experiment and data exist before the fan-out (as the study does)
    subprocess.run(
        [sys.executable, "-m", "ltexp", "prepare-data", *DEMO_EXPERIMENT],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    procs = [
        _start_training(
            tmp_path, env, seed=s, epochs=EPOCHS_8, num_threads=1, evaluate_after="false"
        )
        for s in range(8)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-500:] for e in errors]
    assert not any("database is locked" in e for e in errors)
    runs = _train_runs(uri)
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    client = mlflow.MlflowClient()
    lost = 0
    for run in runs:
        for metric in schema.EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
            lost += EPOCHS_8 - len(set(steps))
    assert lost == 0


def test_eight_concurrent_trainings_on_one_sqlite_file(tmp_path: Path) -> None:
    _eight_trainings(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.postgres
def test_eight_concurrent_trainings_on_a_postgres_server(
    postgres_server: str, tmp_path: Path
) -> None:
    _eight_trainings(tmp_path, postgres_server)


# --- authentication and secrets ----------------------------------------------------------------


def test_basic_auth_server_refuses_anonymous_and_serves_the_pipeline(tmp_path: Path) -> None:
    folder = tmp_path / "server"
    folder.mkdir()
    password = "s3cret-" + os.urandom(6).hex()
    (folder / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = TrackingServer(
        folder,
        f"sqlite:///{folder / 'store.db'}",
        env={
            "MLFLOW_AUTH_CONFIG_PATH": str(folder / "auth.ini"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex(),
        },
        extra=["--app-name", "basic-auth", "--allowed-hosts", "127.0.0.1:*,localhost:*"],
    )
    server.start()
    try:
        anonymous = subprocess.run(
            _train_cmd(tmp_path, epochs=1),
            env=_env(server.uri),
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert anonymous.returncode != 0
        assert "401" in anonymous.stderr or "Unauthorized" in anonymous.stderr
        creds = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
        ok = subprocess.run(
            _train_cmd(tmp_path, epochs=1),
            env=_env(server.uri, **creds),
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert ok.returncode == 0, ok.stderr[-2000:]
        os.environ.update(creds)
        try:
            (run,) = _train_runs(server.uri)
            assert run.info.status == "FINISHED"
            # issue 39: who can register is the server's permission; a reader cannot
            from mlflow.server.auth.client import AuthServiceClient

            reader_password = "r3ader-" + os.urandom(6).hex()
            AuthServiceClient(server.uri).create_user("reader", reader_password)
            (version,) = mlflow.MlflowClient(server.uri).search_model_versions()
        finally:
            for k in creds:
                os.environ.pop(k)
        os.environ.update(
            {"MLFLOW_TRACKING_USERNAME": "reader", "MLFLOW_TRACKING_PASSWORD": reader_password}
        )
        try:
            reader = mlflow.MlflowClient(server.uri)
            assert reader.get_registered_model(version.name).name == version.name  # may read
            with pytest.raises(mlflow.exceptions.MlflowException, match=r"PERMISSION_DENIED|403"):
                reader.create_model_version(
                    version.name, source=version.source, run_id=run.info.run_id
                )
        finally:
            for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(k)
        # no secret anywhere the run stored or printed
        stored = [p for p in folder.rglob("*") if p.is_file() and p.name != "auth.ini"]
        leaks = [str(p) for p in stored if password.encode() in p.read_bytes()]
        assert leaks == []
        assert password not in ok.stdout and password not in ok.stderr
        assert not any(
            password.encode() in p.read_bytes()
            for p in tmp_path.rglob("*")
            if p.is_file() and p.suffix != ".ini"
        )
    finally:
        server.stop()


# --- Ctrl-C --------------------------------------------------------------------------------------


def test_ctrl_c_marks_the_run_killed_and_the_same_command_resumes_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # epochs to spare after epoch 2: a loaded machine may take a while to deliver the signal,
    # and a run that finished first would exit 0
    extra = {"epochs": 20, "train_split": "balanced", "evaluate_after": "false"}
    proc = _start_training(tmp_path, _env(uri), **extra)
    _wait_for_epoch(tmp_path / "ckpt", 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err
    (run,) = _train_runs(uri)
    assert run.info.status == "KILLED"
    saved = torch.load(next((tmp_path / "ckpt").glob(f"*/{LAST}")), weights_only=True)
    assert saved["epoch"] >= 2
    subprocess.run(
        _train_cmd(tmp_path, **extra), env=_env(uri), cwd=tmp_path, check=True, capture_output=True
    )
    (run,) = _train_runs(uri)
    assert run.info.status == "FINISHED"
    assert run.data.tags[schema.RESUMED_FROM_EPOCH] == str(saved["epoch"])


# --- two studies at once, a dead host, a server gone with the default retries ---------------------


def _two_studies(tmp_path: Path, uri: str) -> None:
    """Two identical `ltexp main` on one (fresh) store train each cell once, and agree."""
    grid = {"models": "tiny_cnn", "losses": "ce,bs", "train_splits": "lt", "epochs": 2}
    args = [sys.executable, "-m", "ltexp", "main", *tiny_args(tmp_path, **grid)]
    env = _env(uri, LTEXP_POLL_SECONDS="1")
    procs = [
        subprocess.Popen(
            args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    # both published one report folder, in turn: nothing half-moved is left beside it
    assert [p.name for p in (tmp_path / "reports").iterdir()] == ["demo-digits"]
    mlflow.set_tracking_uri(uri)
    counts = step_counts(uri)
    assert counts["train"] == 2 and counts["evaluate"] == 2
    # both may prepare the data at the same moment: the same splits (digest), cells claimed once
    assert counts["prepare_data"] in (1, 2)
    client = mlflow.MlflowClient()
    for loss in ("ce", "bs"):
        versions = client.search_model_versions(f"name = 'ltexp-digits-tiny_cnn-{loss}-lt'")
        assert len(versions) == 1
    aggregates = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.`ltexp.step` = 'aggregate'",
        output_format="list",
    )
    assert [a.data.metrics["duplicate_cells"] for a in aggregates] == [0, 0]
    assert [a.data.metrics["missing_cells"] for a in aggregates] == [0, 0]


def test_two_studies_at_once_on_a_fresh_sqlite_store(tmp_path: Path) -> None:
    _two_studies(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.postgres
def test_two_studies_at_once_on_a_postgres_server(postgres_server: str, tmp_path: Path) -> None:
    _two_studies(tmp_path, postgres_server)


def test_a_cell_claimed_by_a_dead_host_is_taken_over(tmp_path: Path) -> None:
    """A RUNNING train run of another host whose heartbeat stopped: reaped, cell trained here."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = {"models": "tiny_cnn", "losses": "ce", "train_splits": "lt", "epochs": 1}
    cmd = [sys.executable, "-m", "ltexp", "main", *tiny_args(tmp_path, **grid)]
    env = _env(uri, LTEXP_STALE_SECONDS="120", LTEXP_POLL_SECONDS="1")
    subprocess.run(cmd, env=env, cwd=tmp_path, check=True, capture_output=True)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    (train,) = _train_runs(uri)
    # the cell again, as claimed by a process on a host that went dark ten minutes ago
    dead = client.create_run(
        train.info.experiment_id,
        tags={
            schema.STEP: "train",
            schema.CONFIG_HASH: train.data.tags[schema.CONFIG_HASH],
            schema.HOST: "gpu-node-7",
            schema.PID: "4242",
            schema.HEARTBEAT: f"{time.time() - 600:.0f}",
        },
    ).info.run_id
    client.delete_run(train.info.run_id)  # its finished result is gone: the cell must be trained
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-1500:]
    reaped = client.get_run(dead)
    assert reaped.info.status == "FAILED"
    assert "no heartbeat from process 4242 on gpu-node-7" in reaped.data.tags[schema.ERROR]
    assert [r.info.status for r in _train_runs(uri)] == ["FINISHED", "FAILED"]


def test_server_gone_for_good_with_the_default_retries_ends_within_five_minutes(
    sqlite_server: TrackingServer, tmp_path: Path
) -> None:
    extra = {"epochs": 3, "train_split": "balanced", "evaluate_after": "false"}
    env = {k: v for k, v in _env(sqlite_server.uri).items() if not k.startswith("MLFLOW_HTTP")}
    proc = _start_training(tmp_path, env, **extra)
    _wait_for_epoch(tmp_path / "ckpt", 1, proc)
    sqlite_server.stop()
    gone = time.time()
    _, err = proc.communicate(timeout=420)
    assert time.time() - gone < 300  # docs/reliability.md: at most 5 minutes
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("ltexp train: error:") and "tracking server" in last, last
