"""The design card's own command, rehearsed where nothing can be downloaded.

For each protocol backbone asked for, on CIFAR-100 in its real format and the backbone's
weights in its library's cache (random values, real names, keys and shapes: ltexp.rehearsal),
runs the protocol's path as a user types it:

    mlflow run . -e train -P model=<backbone> -P loss=ldam -P max_per_class=N ...   (long-tailed)
    mlflow run . -e train -P model=<backbone> -P loss=ldam -P train_split=balanced ...
    mlflow run . -e aggregate -P experiment=rehearsal

at 224 px with the protocol's pipeline, shortened only by epochs, batch_size and max_per_class.
Then loads the registered champion with mlflow.pytorch, pyfunc and ltexp.load_model on one
224-px batch, and prints one JSON line: per backbone the train run's wall seconds and images/s,
its checkpoint's size (with optimizer state) beside ltexp plan's estimate, the registered
version's size, whether the three loaders agree, and the report's Table 4.9 row.

    python scripts/rehearse_protocol.py --models mobilenet_v2            # minutes on a CPU
    python scripts/rehearse_protocol.py --models resnet50,mobilenet_v2,vit_b16,convnext_base
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from measured import run_measured  # scripts/measured.py

REPO = Path(__file__).resolve().parent.parent
MLFLOW_RUN = [sys.executable, "-m", "mlflow", "run", str(REPO)]


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _bench_ceiling(model: str, batch_size: int, env: dict[str, str], cwd: Path) -> float:
    """`ltexp bench`'s model-only images/s at 224 px: the ceiling of the training step."""
    command = [sys.executable, "-m", "ltexp", "bench", "--model", model, "--json"]
    command += ["--batch-size", str(batch_size), "--image-size", "224"]
    command += ["--steps", "3", "--repeats", "1", "--warmup", "1"]
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"ltexp bench --model {model} failed: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout)[0]["model_only_img_s"]


def rehearse(model: str, args: argparse.Namespace, home: Path, env: dict[str, str]) -> dict:
    """One backbone through train (both training sets), with its costs."""
    import mlflow

    from ltexp.config import build_config
    from ltexp.rehearsal import write_weights_cache
    from ltexp.study.plan import _checkpoint_bytes, _version_bytes

    write_weights_cache(model, seed=0)
    options = [
        *("-P", f"model={model}", "-P", "loss=ldam", "-P", f"epochs={args.epochs}"),
        *("-P", f"batch_size={args.batch_size}", "-P", f"max_per_class={args.max_per_class}"),
        *("-P", f"data_root={home / 'data'}", "-P", "download=false"),
        *("-P", f"checkpoint_dir={home / 'checkpoints'}", "-P", "system_metrics=false"),
    ]
    out: dict = {"model": model}
    for split in ("lt", "balanced"):
        command = [
            "mlflow",
            "run",
            str(REPO),
            "-e",
            "train",
            *options,
            "-P",
            f"train_split={split}",
        ]
        command += ["--env-manager", "local", "--experiment-name", "rehearsal"]
        done = run_measured(command, env, home)
        out[f"train_{split}_s"] = round(done.seconds, 1)
        out[f"train_{split}_peak_mib"] = round(done.peak_mib)
        out[f"register_{split}_s"] = round(done.phases.get("train.register", float("nan")), 1)
    runs = mlflow.search_runs(
        experiment_names=["rehearsal"],
        filter_string=f"tags.`ltexp.step` = 'train' and params.model = '{model}'",
        output_format="list",
    )
    run = next(r for r in runs if r.data.params["train_split"] == "lt")
    out["images_per_s"] = round(run.data.metrics.get("images_per_s", float("nan")), 1)
    out["bench_model_only_images_per_s"] = _bench_ceiling(model, args.batch_size, env, home)
    uri = f"models:/ltexp-cifar100-{model}-ldam-lt@champion"
    evaluate = [*MLFLOW_RUN, "-e", "evaluate", "-P", f"model_uri={uri}", "--env-manager", "local"]
    # no data_root: evaluate reads the data where the model trained (data_root_for)
    evaluate += ["-P", "download=false"]
    evaluate = run_measured([*evaluate, "--experiment-name", "rehearsal"], env, home)
    out["evaluate_s"] = round(evaluate.seconds, 1)
    out["evaluate_peak_mib"] = round(evaluate.peak_mib)
    checkpoint = home / "checkpoints" / run.info.run_id
    out["checkpoint_bytes"] = _folder_bytes(checkpoint)
    cfg = build_config("thesis", {"model": model, "checkpoint_dir": str(home / "checkpoints")})
    out["plan_checkpoint_bytes"] = _checkpoint_bytes(cfg)
    out["plan_version_bytes"] = _version_bytes(cfg)
    version = mlflow.MlflowClient().get_model_version_by_alias(
        f"ltexp-cifar100-{model}-ldam-lt", "champion"
    )
    files = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=str(home / "v")))
    out["version_bytes"] = _folder_bytes(files)
    return out


def loaders_agree(uri: str, size: int) -> bool:
    """mlflow.pytorch, pyfunc and ltexp.load_model give the same logits on a 224-px batch."""
    import mlflow
    import numpy as np
    import torch

    import ltexp

    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours = ltexp.load_model(uri)(x).numpy()
        scripted = mlflow.pytorch.load_model(uri)(x).numpy()
    served = np.asarray(mlflow.pyfunc.load_model(uri).predict(x.numpy()))
    return bool(np.allclose(ours, scripted, atol=1e-4) and np.allclose(ours, served, atol=1e-4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mobilenet_v2", help="comma-separated backbones")
    parser.add_argument("--max-per-class", type=int, default=2, help="images per class a split")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--folder", default="", help="where everything goes (default: temporary)")
    args = parser.parse_args()
    home = Path(args.folder or tempfile.mkdtemp(prefix="ltexp-rehearsal-")).resolve()
    if not args.folder:  # a temporary one goes with the script (GBs: 2.3 MB a run, 224-px models)
        atexit.register(shutil.rmtree, home, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    from ltexp.rehearsal import offline_environment, write_cifar

    env = offline_environment(home)
    # `mlflow run --env-manager local` starts the entry point with the `python` on PATH: this one
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"})
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true"})
    os.environ.update(env)  # the caches this process writes, the store it reads
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    write_cifar(home / "data", "cifar100", tarball=False)
    report: dict = {"max_per_class": args.max_per_class, "epochs": args.epochs, "models": []}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        report["models"].append(rehearse(model, args, home, env))
        uri = f"models:/ltexp-cifar100-{model}-ldam-lt@champion"
        report["models"][-1]["loaders_agree"] = loaders_agree(uri, 224)
    aggregate = [*MLFLOW_RUN, "-e", "aggregate", "-P", "experiment=rehearsal"]
    aggregate += ["-P", f"output_dir={home / 'reports' / 'rehearsal'}", "--env-manager", "local"]
    report["aggregate_s"] = round(run_measured(aggregate, env, home).seconds, 1)
    bench = home / "reports" / "rehearsal" / "benchmarks.csv"
    report["table_4_9"] = bench.read_text().strip().splitlines() if bench.is_file() else []
    first = (home / "reports" / "rehearsal" / "report.md").read_text().splitlines()
    report["report_says_rehearsal"] = any("a rehearsal" in line for line in first[:8])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
