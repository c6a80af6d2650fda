"""Make the README's MLflow UI screenshots from a real `mlflow ui`, in headless Chromium.

    apt-get install -y chromium && .venv/bin/pip install playwright
    .venv/bin/python docs/ui_screenshots.py            # a small demo study, then the pictures
    .venv/bin/python docs/ui_screenshots.py --store sqlite:///mlflow.db --experiment demo-digits

Writes docs/ui_runs_table.png (the Runs view: train runs only, the cell params and the five
headline test metrics as columns, sorted by tail accuracy) and docs/ui_runs_charts.png (the
chart view of the same runs, test metrics only). Playwright drives Debian's Chromium
(`--chromium`); it downloads no browser of its own.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
COLUMNS = [
    "model",
    "loss",
    "train_split",
    *(f"test_{g}_acc1" for g in ("balanced", "lt", "head", "middle", "tail")),
]
TRAIN_RUNS = "tags.`ltexp.step` = 'train'"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def demo_store(folder: Path) -> tuple[str, str]:
    """A reduced demo study (2 models × 4 losses × 2 training sets, 3 epochs) in ``folder``."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ltexp",
            "main",
            "--preset",
            "demo",
            "--experiment",
            "demo-digits",
            "--losses",
            "ce,focal,bs,ldam",
            "--epochs",
            "3",
            "--system-metrics",
            "false",
            "--checkpoint-dir",
            str(folder / "ckpt"),
        ],
        env=env,
        cwd=folder,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return uri, "demo-digits"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(uri: str, folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return server, base
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.terminate()
                raise SystemExit("mlflow ui did not start") from None
            time.sleep(0.5)


def experiment_id(base: str, name: str) -> str:
    import json

    url = f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())["experiment"]["experiment_id"]


def screenshots(base: str, exp_id: str, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    def toggle_column(page, name: str) -> None:
        page.get_by_placeholder("Search columns").fill(name)
        page.wait_for_timeout(300)
        title = re.compile(f"^{re.escape(name)}$")
        page.locator(".du-bois-light-tree-title", has_text=title).first.click()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        # "Model training" mode of the UI (the sidebar toggle), the Runs view
        page.goto(f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning")
        page.wait_for_timeout(4000)
        if page.get_by_role("button", name="Close").count():
            page.get_by_role("button", name="Close").first.click()  # the assistant panel
        page.get_by_placeholder('metrics.rmse < 1 and params.model = "tree"').fill(TRAIN_RUNS)
        page.keyboard.press("Enter")
        page.wait_for_timeout(2000)
        page.get_by_role("button", name="Columns").click()
        for name in ["Dataset", "Source", "Models", *COLUMNS]:
            toggle_column(page, name)
        page.keyboard.press("Escape")
        page.wait_for_timeout(500)
        study_row = page.locator("div[role=row]").filter(has_text="study-").first
        if study_row.count():
            study_row.locator("button[data-component-id*=runnamecellrenderer]").first.click()
            page.wait_for_timeout(1000)
        page.locator('[col-id="metrics.`test_tail_acc1`"]').first.click()  # sort by tail
        page.wait_for_timeout(1500)
        page.screenshot(path=str(DOCS / "ui_runs_table.png"))
        page.locator("input[value=CHART]").evaluate("e => e.click()")
        page.wait_for_timeout(2000)
        page.get_by_placeholder("Search metric charts").fill("test_")
        page.wait_for_timeout(2000)
        page.screenshot(path=str(DOCS / "ui_runs_charts.png"))
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="tracking URI with a finished study (default: make one)")
    parser.add_argument("--experiment", default="demo-digits")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        uri, experiment = (args.store, args.experiment) if args.store else demo_store(folder)
        server, base = start_ui(uri, folder)
        try:
            screenshots(base, experiment_id(base, experiment), args.chromium)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {DOCS / 'ui_runs_table.png'} and {DOCS / 'ui_runs_charts.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
