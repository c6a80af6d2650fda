"""The scale benchmark a team runs against its own kind of store (issue 40): an mlflow server
over a new PostgreSQL database, evaluate runs with CIFAR-100-sized predictions, and another
experiment's runs written in bulk. scripts/store_scale.py prints one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import PG, postgres_reachable

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.postgres
def test_the_scale_benchmark_measures_a_server_store_and_leaves_nothing(tmp_path: Path) -> None:
    import psycopg2

    if not postgres_reachable():
        pytest.skip(f"no PostgreSQL reachable at {PG} (set LTEXP_TEST_POSTGRES)")

    def databases() -> set[str]:
        with psycopg2.connect(PG) as conn, conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'ltexp_scale_%'")
            return {row[0] for row in cur.fetchall()}

    before, folders = databases(), set(Path(tempfile.gettempdir()).glob("ltexp-scale-*"))
    script = REPO / "scripts" / "store_scale.py"
    args = ["--store", "server", "--database", PG, "--runs", "3", "--other-runs", "250"]
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["store"] == "server" and out["report_rows"] == 3
    assert out["other_runs_found"] == 250
    assert out["aggregate_s"] > 0 and out["aggregate_peak_mb"] > 100
    assert databases() == before  # the store's database is dropped
    assert set(Path(tempfile.gettempdir()).glob("ltexp-scale-*")) == folders  # and its folder
