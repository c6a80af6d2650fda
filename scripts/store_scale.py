"""How ltexp grows with a team's store: wall seconds and peak memory at N evaluate runs.

Fills a throwaway store with N evaluate runs of CIFAR-100 size, as a thesis grid with seeds
would leave them: 4 backbones × 7 losses × 2 training sets × N/56 seeds, each with its
predictions (10,000 balanced and 1,051 long-tailed test images × 100 classes: labels, top-5 and
float16 logits, about 2.3 MB), and the prepare_data run whose manifest the report reads;
``--other-runs M`` adds M runs of another experiment (a train run's params, tags and metrics; no
artifacts), as a lab's server holds. Then runs ``ltexp aggregate`` on it in a fresh process;
with ``--study``, also a demo study (digits, 8 cells, 1 epoch) run once, then ``ltexp plan`` of
it and the same ``ltexp main`` again (every cell reused), each in a fresh process. Prints one
JSON line: the runs, the seconds to fill, and each command's wall seconds and peak memory (the
child process's maximum resident set).

The store is sqlite in a temporary folder (or ``--folder``), or with ``--store server`` an
``mlflow server`` on loopback over a new PostgreSQL database (created on ``--database``'s server
and dropped at the end) with proxied artifacts, as docs/team-server.md sets up a team's server.

    python scripts/store_scale.py --runs 56
    python scripts/store_scale.py --runs 1000 --folder /big/disk/store   # minutes; 2.3 GB
    python scripts/store_scale.py --store server --runs 100 --other-runs 10000 --study

docs/performance.md carries the table and the slope.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from measured import run_measured  # scripts/measured.py

MODELS = ("resnet50", "mobilenet_v2", "vit_b16", "convnext_base")
LOSSES = ("ce", "focal", "wce", "cb", "bs", "seql", "ldam")
SPLITS = ("balanced", "lt")
DIGEST = "e" * 64


def _labels(manifest: dict, split: str) -> np.ndarray:
    counts = np.zeros(100, dtype=int)
    counts[manifest["class_rank"]] = manifest["splits"][split]["per_class"]
    return np.repeat(np.arange(100), counts)


def fill(n_runs: int, manifest: dict) -> None:
    """N evaluate runs and the prepare_data run, in the active tracking store."""
    import mlflow

    from ltexp import schema

    with mlflow.start_run(experiment_id=mlflow.create_experiment("data")):
        mlflow.set_tags({schema.STEP: "prepare_data", schema.DATA_DIGEST: DIGEST})
        mlflow.log_dict(manifest, schema.MANIFEST_ARTIFACT)
    exp = mlflow.create_experiment("scale")
    rng = np.random.default_rng(0)
    labels = {s: _labels(manifest, s) for s in ("test_balanced", "test_lt")}
    cells = list(itertools.product(MODELS, LOSSES, SPLITS))
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n_runs):
            model, loss, split = cells[i % len(cells)]
            arrays = {}
            for name, lab in labels.items():
                logits = rng.normal(size=(len(lab), 100)).astype(np.float16)
                logits[np.arange(len(lab)), lab] += 1.5  # right about half the time
                top5 = np.argsort(-logits, axis=1)[:, :5].astype(np.int32)
                arrays |= {f"{name}_labels": lab, f"{name}_top5": top5, f"{name}_logits": logits}
            path = Path(tmp) / schema.PREDICTIONS_ARTIFACT
            np.savez_compressed(path, **arrays)
            metrics = {}
            for metric in schema.REPORT_COLUMNS.values():
                v = float(rng.uniform(0.3, 0.8))
                metrics |= {metric: v, f"{metric}_ci_low": v - 0.01, f"{metric}_ci_high": v + 0.01}
            with mlflow.start_run(experiment_id=exp):
                mlflow.set_tags({schema.STEP: "evaluate", schema.DATA_DIGEST: DIGEST})
                mlflow.log_params(
                    {"dataset": "cifar100", "model": model, "loss": loss, "train_split": split}
                    | {"seed": i // len(cells), schema.TAU: 0.0}
                )
                mlflow.log_metrics(metrics)
                mlflow.log_artifact(str(path))


def fill_others(n_runs: int, database: str) -> None:
    """N runs of another experiment, each as a train run records itself (40 params, 12 tags, 20
    metrics; no artifacts), inserted in bulk into the store's database with MLflow's own table
    models: through the server's API, 10,000 runs took an hour to write on 2 cores."""
    import uuid

    from mlflow.store.tracking.dbmodels import models as m
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from ltexp import schema

    store = SqlAlchemyStore(database, "file:///unused")
    exp = store.create_experiment("other-lab-work")
    now = int(time.time() * 1000)
    for start in range(0, n_runs, 1000):
        with store.ManagedSessionMaker(read_only=False) as session:
            rows = []
            for i in range(start, min(start + 1000, n_runs)):
                rid = uuid.uuid4().hex
                rows.append(
                    m.SqlRun(
                        run_uuid=rid,
                        name=f"other-{i}",
                        source_type="LOCAL",
                        source_name="",
                        entry_point_name="",
                        user_id="lab",
                        status="FINISHED",
                        start_time=now,
                        end_time=now + 1000,
                        source_version="",
                        lifecycle_stage="active",
                        artifact_uri="",
                        experiment_id=int(exp),
                    )
                )
                rows += [m.SqlTag(key=schema.STEP, value="train", run_uuid=rid)]
                rows += [
                    m.SqlTag(key=f"tag_{k}", value=f"v{i % 50}", run_uuid=rid) for k in range(11)
                ]
                rows += [
                    m.SqlParam(key=f"param_{k}", value=str(i % 997), run_uuid=rid)
                    for k in range(40)
                ]
                for k in range(20):
                    value = dict(key=f"metric_{k}", value=(i % 97) / (k + 1), timestamp=now, step=0)
                    rows += [m.SqlMetric(**value, is_nan=False, run_uuid=rid)]
                    rows += [m.SqlLatestMetric(**value, is_nan=False, run_uuid=rid)]
            session.add_all(rows)


class Server:
    """``mlflow server`` on loopback over a new PostgreSQL database (dropped at stop), with
    proxied artifacts in ``folder``: a team's tracking server (docs/team-server.md)."""

    def __init__(self, folder: Path, database: str) -> None:
        self.admin = database
        self.name = f"ltexp_scale_{os.getpid()}"
        self.folder = folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        server = database.replace("postgresql://", "postgresql+psycopg2://").rsplit("/", 1)[0]
        self.database = f"{server}/{self.name}"  # the store, as SQLAlchemy names it
        self.proc: subprocess.Popen | None = None

    def _admin(self, sql: str) -> None:
        import psycopg2

        conn = psycopg2.connect(self.admin)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
        conn.close()

    def start(self) -> None:
        self._admin(f"CREATE DATABASE {self.name}")
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri"]
        command += [self.database, "--artifacts-destination", str(self.folder / "art")]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "4"]
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - the server's, until stop
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    sys.exit(f"mlflow server exited; see {self.folder / 'server.log'}")
                time.sleep(0.5)
        sys.exit(f"mlflow server did not answer in 120 s; see {self.folder / 'server.log'}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


# a demo study of 8 cells (2 backbones × 2 losses × 2 training sets), one epoch each
STUDY = ["--preset", "demo", "--epochs", "1", "--losses", "ce,bs", "--experiment", "study"]
STUDY += ["--system-metrics", "false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=56, help="evaluate runs (default 56)")
    parser.add_argument(
        "--other-runs", type=int, default=0, help="runs of another experiment (default 0)"
    )
    parser.add_argument("--store", choices=("sqlite", "server"), default="sqlite")
    parser.add_argument(
        "--database",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="--store server: a PostgreSQL database to connect to; the store is a new database "
        "on its server, dropped at the end",
    )
    parser.add_argument(
        "--study", action="store_true", help="also time ltexp plan and a reused demo study"
    )
    parser.add_argument("--folder", default="", help="where the store goes (default: temporary)")
    args = parser.parse_args()
    if args.runs < 1 or args.other_runs < 0:
        parser.error("--runs must be 1 or more and --other-runs 0 or more")
    folder = Path(args.folder or tempfile.mkdtemp(prefix="ltexp-scale-"))
    if not args.folder:  # a temporary one goes with the script (GBs: 2.3 MB a run, 224-px models)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    uri = database = f"sqlite:///{folder / 'mlflow.db'}"
    if args.store == "server":
        server = Server(folder, args.database)
        server.start()
        atexit.register(server.stop)  # registered after rmtree: runs first
        uri, database = server.uri, server.database
    os.environ.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"})
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # a line per run filled
    os.chdir(folder)
    import mlflow

    from ltexp.rehearsal import protocol_manifest
    from ltexp.tracking import runs

    mlflow.set_tracking_uri(uri)
    started = time.perf_counter()
    fill(args.runs, protocol_manifest())
    fill_others(args.other_runs, database)
    out = {"store": args.store, "runs": args.runs, "other_runs": args.other_runs}
    out["fill_s"] = round(time.perf_counter() - started, 1)
    ltexp = [sys.executable, "-m", "ltexp"]
    env = dict(os.environ)
    report = ["--experiment", "scale", "--output-dir", str(folder / "report")]
    aggregate = run_measured([*ltexp, "aggregate", "--preset", "thesis", *report], env, folder)
    out |= {"aggregate_s": round(aggregate.seconds, 1)}
    out |= {"aggregate_peak_mb": round(aggregate.peak_mib, 1)}
    out |= {"aggregate_s_per_run": round(aggregate.seconds / args.runs, 3)}
    # what was measured is what was asked: every run in the report, the other runs in the store
    with open(folder / "report" / "runs.csv") as f:
        out["report_rows"] = sum(1 for _ in f) - 1
    other = mlflow.get_experiment_by_name("other-lab-work")
    out["other_runs_found"] = len(runs.search_all([other.experiment_id])) if other else 0
    if args.study:
        first = run_measured([*ltexp, "main", *STUDY], env, folder)
        plan = run_measured([*ltexp, "plan", *STUDY], env, folder)
        again = run_measured([*ltexp, "main", *STUDY], env, folder)
        if "reused" not in again.stdout:
            sys.exit(f"the second study trained again: {again.stdout[-500:]}")
        out |= {"study_first_s": round(first.seconds, 1), "plan_s": round(plan.seconds, 1)}
        out |= {"study_reused_s": round(again.seconds, 1)}
        out |= {"study_reused_peak_mb": round(again.peak_mib, 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
