"""Shared fixtures: a temporary tracking store, a tiny CPU config, a CIFAR-format fixture.

Every test that tracks runs gets its own sqlite store in ``tmp_path`` and its own checkpoint and
data folders, so tests never see each other's runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network here
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail fast instead of retrying the hub
os.environ.setdefault("LTEXP_LOG_LEVEL", "WARNING")

REPO = Path(__file__).resolve().parent.parent


def system_tool(name: str, package: str, *, optional: bool = False) -> str | None:
    """Path of a system program a check needs (chromium, pdflatex). Missing: a failure where
    ``LTEXP_SYSTEM_TOOLS=required`` (CI installs them), else a skip, or with ``optional`` a
    warning and None (the rest of the test still runs)."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed (apt-get install {package})"
    if os.environ.get("LTEXP_SYSTEM_TOOLS") == "required":
        pytest.fail(reason)
    if optional:
        warnings.warn(reason, stacklevel=2)
        return None
    pytest.skip(reason)


_EMPTY_STORE: list[Path] = []  # this test process's empty, migrated store


def empty_store(folder: Path) -> None:
    """Put an empty MLflow sqlite store at ``folder/mlflow.db``, as MLflow would create it on first
    use with ``folder`` as the working directory: a copy of one created once per test process.
    Creating the tables and running MLflow's migrations costs about 1.6 s per store; a copy, a few
    milliseconds."""
    import shutil
    import sqlite3
    import tempfile

    import mlflow

    target = folder / "mlflow.db"
    if target.exists():
        return
    if not _EMPTY_STORE:
        root = Path(tempfile.mkdtemp(prefix="ltexp-empty-store-"))
        mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}").search_experiments()
        _EMPTY_STORE.append(root / "mlflow.db")
    shutil.copyfile(_EMPTY_STORE[0], target)
    with contextlib.closing(sqlite3.connect(target)) as db, db:
        # the Default experiment's artifact folder is where MLflow would have put it
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(folder / "mlruns" / "0"),),
        )


@contextlib.contextmanager
def store_in(folder: Path) -> Iterator[str]:
    """Point MLflow (and the working directory) at a sqlite store in ``folder`` while inside
    (an empty one, :func:`empty_store`, unless the folder has one)."""
    import mlflow

    empty_store(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mp.chdir(folder)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            while mlflow.active_run():
                mlflow.end_run()
            mlflow.set_tracking_uri(previous)


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[str]:
    """A fresh sqlite tracking store in ``tmp_path`` (also the working directory)."""
    with store_in(tmp_path) as uri:
        yield uri


def step_counts(uri: str | None = None) -> Counter:
    """How many runs of each ``ltexp.step`` the store holds; none may be left RUNNING."""
    import mlflow

    from ltexp import schema

    if uri:
        mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    return Counter(r.data.tags.get(schema.STEP) for r in runs)


def tiny_overrides(tmp_path: Path, **extra: object) -> dict[str, object]:
    """Overrides that make the demo preset a few-second CPU job in ``tmp_path``."""
    values: dict[str, object] = {
        "epochs": 2,
        "system_metrics": "false",
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "data_root": str(tmp_path / "data"),
        "bootstrap_samples": 50,
        "deterministic": "true",
        "num_threads": 1,
    }
    values.update(extra)
    return values


def tiny_args(tmp_path: Path, **extra: object) -> list[str]:
    """:func:`tiny_overrides` as command-line options, after ``--preset demo``."""
    args = ["--preset", "demo"]
    for key, value in tiny_overrides(tmp_path, **extra).items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.fixture
def tiny_config(tmp_path: Path, tracking: str):
    """The demo preset shrunk to a few CPU seconds, tracking into ``tmp_path``."""
    from ltexp.config import build_config

    def make(**extra: object):
        return build_config("demo", tiny_overrides(tmp_path, **extra))

    return make


@dataclass
class Trained:
    """A finished cell (train run + child evaluate run) in a store of its own."""

    folder: Path
    cfg: Any  # ltexp.config.Config
    cell: Any  # ltexp.study.run.CellResult


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One short cell, trained once per test process, for the tests that read it (they may add
    runs, never change or delete one)."""
    from ltexp.config import build_config
    from ltexp.study.run import run_cell

    folder = tmp_path_factory.mktemp("trained")
    with store_in(folder):
        cfg = build_config("demo", tiny_overrides(folder, loss="bs", epochs=3))
        return Trained(folder, cfg, run_cell(cfg))


@pytest.fixture
def trained(trained_store: Trained) -> Iterator[tuple[Any, Any, Any]]:
    """The shared cell, with MLflow pointed at its store: (config, train result, cell)."""
    with store_in(trained_store.folder):
        yield trained_store.cfg, trained_store.cell.train, trained_store.cell


def write_cifar100(
    root: Path, train_per_class: int = 500, test_per_class: int = 100, seed: int = 0
) -> Path:
    """Write torchvision's ``cifar-100-python/`` format with random pixels; return the folder."""
    from ltexp.data.cifar import CIFAR100

    return write_cifar(root, CIFAR100, train_per_class, test_per_class, seed)


def write_cifar(
    root: Path, release: Any, train_per_class: int, test_per_class: int, seed: int = 0
) -> Path:
    """A CIFAR release's on-disk format with random pixels (:func:`ltexp.rehearsal.write_cifar`)."""
    from ltexp.rehearsal import write_cifar as write

    return write(root, release.name, train_per_class, test_per_class, seed)


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size (50,000 + 10,000 images) CIFAR-100 copy with random pixels, read-only use."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root)
    return root


# --- real tracking servers -------------------------------------------------------------------

PG = os.environ.get("LTEXP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_reachable() -> bool:
    """A PostgreSQL server answers at ``PG``."""
    try:
        import psycopg2

        psycopg2.connect(PG, connect_timeout=3).close()
        return True
    except Exception:  # noqa: BLE001 - any failure means: no server to test against
        return False


def _pg_admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    """``mlflow server`` on loopback, proxied artifacts in ``folder``; stop and start it again."""

    def __init__(
        self,
        folder: Path,
        backend: str,
        env: dict[str, str] | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.folder, self.backend = folder, backend
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.extra = extra or []
        self.proc = None

    def start(self) -> None:
        import subprocess
        import sys
        import time
        import urllib.error
        import urllib.request

        with open(self.folder / "server.log", "ab") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--backend-store-uri",
                    self.backend,
                    "--artifacts-destination",
                    str(self.folder / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "2",
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.folder,
            )
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError:
                return  # it answers (auth may refuse the health check)
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server did not start: see {self.folder}/server.log")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def sqlite_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tracking server over a sqlite store (fast; for outage tests)."""
    import mlflow

    folder = tmp_path / "server"
    folder.mkdir()
    server = TrackingServer(folder, f"sqlite:///{folder / 'store.db'}")
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(server.uri)
    yield server
    server.stop()


@pytest.fixture
def postgres_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tracking server over its own new PostgreSQL database, dropped afterwards."""
    import uuid

    import mlflow

    if not postgres_reachable():
        pytest.skip(f"no PostgreSQL reachable at {PG} (set LTEXP_TEST_POSTGRES)")
    db = f"ltexp_{uuid.uuid4().hex[:10]}"
    _pg_admin(f"CREATE DATABASE {db}")
    folder = tmp_path / "server"
    folder.mkdir()
    # SQLAlchemy 2.1 maps postgresql:// to psycopg 3; name the driver ltexp[postgres] installs
    store = PG.replace("postgresql://", "postgresql+psycopg2://").rsplit("/", 1)[0] + f"/{db}"
    server = TrackingServer(folder, store)
    try:
        server.start()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        monkeypatch.chdir(tmp_path)
        mlflow.set_tracking_uri(server.uri)
        yield server.uri
    finally:
        server.stop()
        _pg_admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


# Formats and modes the image-file datasets must read: (extension, PIL format, PIL mode).
IMAGE_KINDS = (
    (".png", "PNG", "RGB"),
    (".jpg", "JPEG", "RGB"),
    (".png", "PNG", "L"),  # grey
    (".png", "PNG", "RGBA"),
    (".webp", "WEBP", "RGB"),
    (".bmp", "BMP", "RGB"),
    (".JPEG", "JPEG", "L"),
)


def write_image(path: Path, label: int, index: int, seed: int = 0) -> None:
    """One small image of class ``label``: its class colour plus noise, in a format, mode and
    size that vary with ``index`` (24–56 px, not square), so a model can tell classes apart."""
    from PIL import Image

    ext, fmt, mode = IMAGE_KINDS[index % len(IMAGE_KINDS)]
    rng = np.random.default_rng([seed, label, index])
    h, w = 24 + 8 * (index % 5), 24 + 8 * ((index + 2) % 5)
    colour = np.random.default_rng([seed, label]).uniform(30, 225, 3)
    pixels = np.clip(colour + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB").convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path.with_suffix(ext), fmt)


def write_image_folder(
    root: Path,
    train_counts: list[int],
    test_per_class: int = 0,
    val_per_class: int = 0,
    seed: int = 0,
) -> Path:
    """An ImageFolder tree: ``train/<class>/`` with ``train_counts[i]`` images of class i, and
    ``val/``, ``test/`` with a fixed number per class when asked."""
    for c, n in enumerate(train_counts):
        for i in range(n):
            write_image(root / "train" / f"class_{c:02d}" / f"img_{i:04d}", c, i, seed)
    for name, per_class in (("val", val_per_class), ("test", test_per_class)):
        for c in range(len(train_counts) if per_class else 0):
            for i in range(per_class):
                write_image(root / name / f"class_{c:02d}" / f"img_{i:04d}", c, 1000 + i, seed)
    return root
