"""The prepared GPU check: what ltexp's CI (CPU only) cannot prove, in under 10 minutes on one
GPU, written to one JSON file.

    python scripts/gpu_check.py --out gpu_check.json         # on the GPU machine
    python scripts/gpu_check.py --smoke --out smoke.json     # the same steps, tiny, on a CPU

1. ``ltexp bench --json`` of the four protocol backbones (bf16 autocast, channels_last, the real
   training step and the model-only ceiling).
2. One protocol-sized cell: ResNet-50 on a 100-class synthetic set at CIFAR's 32 px resized to
   224 (no download needed: the GPU machine may be offline), a few hundred steps, with bf16,
   channels_last and torch.compile; it is registered, evaluated, and its model loads.
3. Kill -9 and resume: the same kind of run killed after its first epoch, the same command again;
   the run must be resumed (``ltexp.resumed_from_epoch``) and finish.
4. With ``--rehearse``: the design card's command for the four protocol backbones at 224 px on
   CIFAR-100's real format and weights in the libraries' caches (``scripts/rehearse_protocol.py``;
   on a CPU, ``--smoke`` rehearses MobileNetV2 only).

The machine needs ltexp's requirements (MLflow among them); offline, install them from wheels
brought along. The JSON holds each step's result, its seconds, and ``ok``; the exit status is 0
only when every step passed. docs/performance.md records the results of a run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BACKBONES = ("resnet50", "mobilenet_v2", "vit_b16", "convnext_base")


def ltexp(*args: str, env: dict[str, str], cwd: Path, timeout: int = 600) -> dict[str, Any]:
    """Run ``python -m ltexp`` and return its exit status, seconds and output's last lines."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ltexp", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return {
        "command": " ".join(["ltexp", *args]),
        "returncode": done.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "stdout": done.stdout,
        "stderr_tail": done.stderr[-2000:],
    }


def cell_args(smoke: bool, folder: Path, epochs: int) -> list[str]:
    """A cell on the synthetic set: protocol-sized on a GPU, tiny in a smoke run."""
    if smoke:
        model = ["--model", "tiny_cnn", "--synthetic-classes", "10"]
        model += ["--synthetic-train-per-class", "40"]
        device = ["--device", "cpu", "--precision", "bf16", "--channels-last", "true"]
    else:
        model = ["--model", "resnet50", "--synthetic-classes", "100"]
        model += ["--synthetic-train-per-class", "64"]
        device = ["--device", "cuda", "--precision", "bf16", "--channels-last", "true"]
        device += ["--compile", "true"]
    return [
        "--preset",
        "demo",
        "--dataset",
        "synthetic",
        *model,
        "--loss",
        "ce",
        "--train-split",
        "lt",
        "--pretrained",
        "false",
        "--epochs",
        str(epochs),
        "--system-metrics",
        "false",
        "--checkpoint-dir",
        str(folder / "ckpt"),
        "--data-root",
        str(folder / "data"),
        *device,
    ]


def bench(smoke: bool, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    models = ("tiny_cnn",) if smoke else BACKBONES
    args = [a for m in models for a in ("--model", m)]
    args += ["--json", "--repeats", "1" if smoke else "3"] + (["--steps", "3"] if smoke else [])
    out = ltexp("bench", *args, env=env, cwd=cwd)
    out["results"] = json.loads(out["stdout"]) if out["returncode"] == 0 else None
    out["ok"] = out["returncode"] == 0
    return out


def one_cell(smoke: bool, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    out = ltexp("train", *cell_args(smoke, cwd / "cell", 2 if smoke else 4), env=env, cwd=cwd)
    words = out["stdout"].split()
    uri = next((w for w in words if w.startswith("models:/")), None)
    out["model_uri"] = uri
    loaded = None
    if uri:
        code = (
            f"import ltexp, torch; m = ltexp.load_model({uri!r});"
            "print(tuple(m(torch.zeros(2, 3, 32, 32)).shape))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True
        )
        loaded = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else None
    out["loaded_output_shape"] = loaded
    out["ok"] = out["returncode"] == 0 and "evaluate run:" in out["stdout"] and bool(loaded)
    return out


def kill_and_resume(smoke: bool, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Kill -9 a training after its first epoch is in the store; run the command again."""
    import mlflow

    folder = cwd / "resume"
    args = [sys.executable, "-m", "ltexp", "train", *cell_args(smoke, folder, 6 if smoke else 8)]
    process = subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    deadline, killed_after = time.monotonic() + 300, None
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        trains = mlflow.search_runs(
            search_all_experiments=True,
            output_format="list",
            filter_string="tags.`ltexp.step` = 'train' and attributes.status = 'RUNNING'",
        )
        for run in trains:
            history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_acc1")
            if history:
                killed_after = max(m.step for m in history)
        if killed_after:
            process.send_signal(signal.SIGKILL)
            process.wait()
            break
    again = ltexp("train", *args[4:], env=env, cwd=cwd)
    resumed = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string="tags.`ltexp.resumed_from_epoch` != ''",
    )
    again["killed_after_epoch"] = killed_after
    again["resumed_from_epoch"] = (
        int(resumed[0].data.tags["ltexp.resumed_from_epoch"]) if resumed else None
    )
    again["ok"] = bool(killed_after) and again["returncode"] == 0 and bool(resumed)
    return again


def rehearse(smoke: bool, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """scripts/rehearse_protocol.py for the four backbones (MobileNetV2 alone with --smoke)."""
    models = "mobilenet_v2" if smoke else ",".join(BACKBONES)
    script = Path(__file__).resolve().parent / "rehearse_protocol.py"
    command = [sys.executable, str(script), "--models", models, "--folder", str(cwd / "rehearsal")]
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    out: dict[str, Any] = {"ok": done.returncode == 0, "seconds": time.monotonic() - started}
    if done.returncode == 0:
        result = json.loads(done.stdout.strip().splitlines()[-1])
        out["result"] = result
        out["ok"] = all(m["loaders_agree"] for m in result["models"])
    else:
        out["error"] = done.stderr[-2000:]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    parser.add_argument(
        "--rehearse", action="store_true", help="also rehearse the protocol's four backbones"
    )
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        }
        report: dict[str, Any] = {
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "smoke": args.smoke,
        }
        for name, step in (("bench", bench), ("cell", one_cell), ("resume", kill_and_resume)):
            started = time.monotonic()
            report[name] = step(args.smoke, env, cwd)
            print(
                f"{name}: {'ok' if report[name]['ok'] else 'FAILED'} "
                f"({time.monotonic() - started:.0f} s)",
                flush=True,
            )
        if args.rehearse:
            report["rehearsal"] = rehearse(args.smoke, env, cwd)
    steps = ("bench", "cell", "resume", *(("rehearsal",) if args.rehearse else ()))
    report["ok"] = all(report[n]["ok"] for n in steps)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}: {'every step passed' if report['ok'] else 'a step FAILED'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
