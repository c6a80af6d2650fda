"""Make the README's MLflow UI screenshots from a real `mlflow ui`, in headless Chromium.

    apt-get install -y chromium
    .venv/bin/python docs/ui_screenshots.py     # the demo study (28 cells), then the pictures
    .venv/bin/python docs/ui_screenshots.py --store sqlite:///mlflow.db --experiment demo-digits

Each picture is the page at the address a study prints (`results table: ...`): the experiment's
saved results view (ltexp.tracking.runs.save_results_view), as docs/ui_runs_table.png (the train
runs flat, the cell params and the headline test metrics as columns, best balanced accuracy
first) and, in the UI's chart mode, docs/ui_runs_charts.png (test metrics only). Each PNG carries
the digest of the commands that made it (:func:`commands_digest`); tests/test_docs.py fails when
the commands change and the pictures were not made again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1600,900",
    "--virtual-time-budget=60000",  # the page's requests and its charts, before the picture
]
# picture -> what is added to the results view's address
PICTURES = {"ui_runs_table.png": "", "ui_runs_charts.png": "&compareRunsMode=CHART"}
DIGEST_KEY = "ltexp-screenshot-commands"


def commands(base: str, view: str) -> dict[str, list[str]]:
    """The Chromium command line of each picture (``view``: the results view's UI path)."""
    return {
        name: ["chromium", *CHROMIUM_ARGS, f"--screenshot={name}", f"{base}/{view}{extra}"]
        for name, extra in PICTURES.items()
    }


def commands_digest() -> str:
    """What the pictures depend on: the commands, with the server and experiment left out."""
    text = json.dumps(commands("BASE", "VIEW"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def demo_store(folder: Path) -> tuple[str, str]:
    """The README's demo study (2 models × 7 losses × 2 training sets) in ``folder``."""
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
    url = f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())["experiment"]["experiment_id"]


def screenshots(base: str, exp_id: str, chromium: str, uri: str) -> None:
    import mlflow
    from PIL import Image, PngImagePlugin

    from ltexp.tracking import runs

    mlflow.set_tracking_uri(uri)
    view = runs.save_results_view(exp_id)  # as the study saved it
    info = PngImagePlugin.PngInfo()
    info.add_text(DIGEST_KEY, commands_digest())
    for name, command in commands(base, view).items():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [chromium, *command[1:]], cwd=tmp, check=True, capture_output=True, timeout=300
            )
            Image.open(Path(tmp) / name).save(DOCS / name, pnginfo=info)


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
            screenshots(base, experiment_id(base, experiment), args.chromium, uri)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {DOCS / 'ui_runs_table.png'} and {DOCS / 'ui_runs_charts.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
