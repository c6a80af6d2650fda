"""Running cells of a study in parallel, on existing engines: local processes, or a Ray cluster.

Each cell runs as its own ``ltexp train`` process (its own CUDA context, its own crash domain),
given the whole cell: its resolved config as a YAML file (every axis's value, every option, the
prepared data run), and the study run as its parent. Nothing of the cell is passed any other way,
so a worker trains exactly the cell the study planned. ``local`` runs up to ``workers`` such
processes here, one GPU each when there are GPUs; ``ray`` submits them as Ray tasks (one GPU
each when the cluster has GPUs), so a grid spreads over every node. The tracking store and the
experiment already exist before any fan-out: several processes creating one sqlite store at
once would race in MLflow's schema migration.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
import yaml

from ltexp.config import Config
from ltexp.errors import ConfigError, TrainingError

CONFIG_PLACEHOLDER = "{config}"
CELL_TAKEN = 3  # exit status of `ltexp train` when another live process has the cell


@dataclass(frozen=True)
class CellTask:
    """A cell the study must run: its position, name, config, and its finished train run when
    only the evaluation is missing."""

    index: int
    name: str
    config: Config
    finished_train: str | None = None
    config_hash: str = ""
    tuned_from: str | None = None  # the search whose best values the config holds


@dataclass
class CellJob:
    """One cell to run: its position, name, ``ltexp`` arguments, and its config (YAML)."""

    index: int
    name: str
    args: list[str]
    config: str


RAY_CONNECT_SECONDS = 10.0  # Ray itself retries an unreachable cluster for minutes
# a cell's Ray task lost with its node is run again elsewhere this many times (system failures
# only: a cell that fails on its own is not retried)
RAY_TASK_RETRIES = 3
TASK_LOST = -1  # the exit status reported for a task Ray could not run to its end
RAY_NICENESS = "RAY_worker_niceness"  # read by the Ray processes a local cluster starts


def check_available(cfg: Config) -> None:
    """Refuse an executor that cannot run here, before any run is created: Ray not installed,
    or a Ray cluster address that does not answer within :data:`RAY_CONNECT_SECONDS`."""
    if cfg.study.executor != "ray":
        return
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("executor=ray needs Ray: pip install 'ltexp[ray]'")
    address = cfg.study.ray_address.strip()
    if address in ("", "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"ray_address {address!r} must be host:port (or ray://host:port, auto, or empty "
            f"for a local cluster)"
        )
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_SECONDS).close()
    except OSError as e:
        raise ConfigError(
            f"the Ray cluster at {address!r} does not answer ({e.strerror or e}); start it "
            f"(ray start --head) or leave ray_address empty for a local one"
        ) from None


def cell_jobs(todo: list[CellTask], study_run: str) -> list[CellJob]:
    """The ``ltexp`` command line of every cell (train, or evaluate for a trained cell), each
    with the cell's whole config."""
    jobs = []
    for task in todo:
        if task.finished_train:
            args = ["evaluate", "--train-run", task.finished_train]
            args += ["--parent-run-id", task.finished_train]
        else:
            args = ["train", "--parent-run-id", study_run]
            if task.tuned_from:  # recorded on the run: its config holds that search's values
                args += ["--tuned-from", task.tuned_from]
        args = [args[0], "--preset", CONFIG_PLACEHOLDER, *args[1:]]
        jobs.append(CellJob(task.index, task.name, args, config_text(task.config)))
    return jobs


def config_text(cfg: Config) -> str:
    """A resolved config as a preset YAML that a worker loads."""
    values = cfg.to_dict()
    values.pop("preset")
    return yaml.safe_dump(values, sort_keys=False)


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a cell process: this one, pointed at the same tracking server, without
    the ``mlflow run`` run id (each cell starts its own run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID",)}
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    env.update(extra or {})
    return env


def run_cell_process(args: list[str], config: str, env: dict[str, str]) -> tuple[int, str]:
    """Run one ``ltexp`` cell command; return its exit status and the tail of its output."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(config)
        argv = [
            sys.executable,
            "-m",
            "ltexp",
            *[str(path) if a == CONFIG_PLACEHOLDER else a for a in args],
        ]
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
    return done.returncode, tail


def run_parallel(
    todo: list[CellTask],
    total: int,
    cfg: Config,
    study_run: str,
    progress: Callable[[str], None],
) -> tuple[list[str], list[CellTask]]:
    """Run ``todo`` on the configured executor; a progress line per finished cell; return the
    names of the cells that ran, and the tasks another live process was training already."""
    jobs = cell_jobs(todo, study_run)
    runner = EXECUTORS.get(cfg.study.executor)
    if runner is None:
        raise ConfigError(f"unknown executor {cfg.study.executor!r}; valid: {', '.join(EXECUTORS)}")
    ran, failed, elsewhere = [], [], []
    task_of = {t.index: t for t in todo}

    def report(job: CellJob, code: int, tail: str, seconds: float) -> None:
        if code == 0:
            ran.append(job.name)
            progress(f"[{job.index}/{total}] {job.name}: done ({seconds:.1f}s)")
        elif code == CELL_TAKEN:
            elsewhere.append(task_of[job.index])
            progress(f"[{job.index}/{total}] {job.name}: another process is training it")
        else:
            failed.append(job.name)
            last = tail.splitlines()[-1] if tail else ""
            progress(f"[{job.index}/{total}] {job.name}: FAILED (exit {code}): {last}")

    runner(jobs, cfg, report)
    if failed:
        raise TrainingError(
            f"{len(failed)} cell(s) failed: {', '.join(failed)}; re-run the "
            f"same command to retry them (finished cells are reused)"
        )
    return ran, elsewhere


def _gpu_count() -> int:

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_local(
    jobs: list[CellJob],
    cfg: Config,
    report: Callable[[CellJob, int, str, float], None],
) -> None:
    """Up to ``workers`` processes at once; one GPU each (``CUDA_VISIBLE_DEVICES``) if any."""
    gpus = _gpu_count()
    workers = min(cfg.study.workers, gpus) if gpus else cfg.study.workers
    free = list(range(gpus)) if gpus else [None] * workers
    # without GPUs, split the cores so that N processes do not each spawn a thread per core
    threads = cfg.runtime.num_threads or max(1, (os.cpu_count() or 1) // workers)

    def launch(job: CellJob, slot: int | None) -> tuple[int, str, float]:
        extra = {"CUDA_VISIBLE_DEVICES": str(slot)} if slot is not None else {}
        args = list(job.args)
        if slot is None and args[0] == "train":
            args += ["--num-threads", str(threads)]
        started = time.perf_counter()
        code, tail = run_cell_process(args, job.config, worker_env(extra))
        return code, tail, time.perf_counter() - started

    pending = list(jobs)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        running = {}
        while pending or running:
            while pending and free:
                job, slot = pending.pop(0), free.pop(0)
                running[pool.submit(launch, job, slot)] = (job, slot)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job, slot = running.pop(future)
                free.append(slot)
                code, tail, seconds = future.result()
                report(job, code, tail, seconds)


def run_ray(
    jobs: list[CellJob],
    cfg: Config,
    report: Callable[[CellJob, int, str, float], None],
) -> None:
    """Each cell a Ray task: 1 GPU when the cluster has GPUs, else 1 CPU.

    A task lost with its node (or its worker process) is submitted again by Ray, on a node that
    is alive, up to :data:`RAY_TASK_RETRIES` times: its ``ltexp train`` finds the cell's run
    left behind (reaped: its process is gone) and resumes it from its last checkpoint when the
    checkpoint folder is shared, else trains it anew. A cell's own failure (an exception, a
    non-zero exit) is not retried: it is reported. A task still lost after its retries is
    reported as failed, naming the cause."""
    try:
        import ray  # the optional ray extra
    except ImportError:
        raise ConfigError("executor=ray needs Ray: pip install 'ltexp[ray]'") from None
    if not ray.is_initialized():
        # Ray runs its workers at niceness 15, and a cell's process inherits it: on a machine
        # that does anything else, training gets the leftovers (measured: a 30 s Ray test took
        # 12 min beside three other test processes). A cluster ltexp starts here trains at
        # normal priority; a cluster's own nodes take RAY_worker_niceness=0 at `ray start`.
        with _environ(RAY_NICENESS, os.environ.get(RAY_NICENESS, "0")):
            ray.init(
                address=cfg.study.ray_address or None,
                ignore_reinit_error=True,
                log_to_driver=False,
                include_dashboard=False,
            )
    has_gpus = ray.cluster_resources().get("GPU", 0) >= 1
    task = ray.remote(num_gpus=1 if has_gpus else 0, num_cpus=1, max_retries=RAY_TASK_RETRIES)(
        _ray_cell
    )
    env = worker_env()
    started = {}
    futures = {}
    for job in jobs:
        futures[task.remote(job.args, job.config, env)] = job
        started[job.name] = time.perf_counter()
    while futures:
        done, _ = ray.wait(list(futures), num_returns=1)
        job = futures.pop(done[0])
        try:
            code, tail = ray.get(done[0])
        except ray.exceptions.RayError as e:  # lost RAY_TASK_RETRIES + 1 times
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            code, tail = TASK_LOST, f"its Ray task was lost ({type(e).__name__}: {first[:200]})"
        report(job, code, tail, time.perf_counter() - started[job.name])


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` while inside (what a process started inside inherits)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _ray_cell(args: list[str], config: str, env: dict[str, str]) -> tuple[int, str]:
    # Ray sets CUDA_VISIBLE_DEVICES for the task's GPU; keep it
    merged = {**env, **{k: v for k, v in os.environ.items() if k == "CUDA_VISIBLE_DEVICES"}}
    return run_cell_process(args, config, merged)


EXECUTORS: dict[str, Callable[..., None]] = {"local": run_local, "ray": run_ray}
