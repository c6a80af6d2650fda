"""`ltexp plan`: what `main` would run, reuse and resume, what it costs, what is missing; it
creates no run."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import mlflow
import pytest

from ltexp import schema
from ltexp.checkpoint import checkpoint_folder
from ltexp.cli import main
from ltexp.config import build_config
from ltexp.study.plan import CELL_OVERHEAD_S, make_plan
from tests.conftest import tiny_args, tiny_overrides

GRID = {"models": "tiny_cnn", "losses": "ce,bs"}
# the demo's splits (docs/protocol.md, the demo report's Table 3.2): 1,200 balanced training
# images, 294 long-tailed
TRAIN_IMAGES = {"balanced": 1200, "lt": 294}


def _all_runs() -> list:
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def _config(tmp_path: Path, **extra: object):
    return build_config("demo", tiny_overrides(tmp_path, **{**GRID, **extra}))


def test_a_new_store_plans_every_cell_and_creates_no_run(tmp_path: Path, tracking: str) -> None:
    plan = make_plan(_config(tmp_path), measure=lambda cfg: 1000.0)
    assert [c.name for c in plan.cells] == [
        "tiny_cnn-ce-balanced-s42",
        "tiny_cnn-ce-lt-s42",
        "tiny_cnn-bs-balanced-s42",
        "tiny_cnn-bs-lt-s42",
    ]
    assert {c.status for c in plan.cells} == {"new"} and plan.ready
    for c in plan.cells:
        assert c.images == 2 * TRAIN_IMAGES[c.identity["train_split"]]  # 2 epochs
        assert c.seconds > CELL_OVERHEAD_S + c.images / 1000.0  # and its evaluations
    assert plan.seconds > sum(c.seconds for c in plan.cells)  # the study's own overhead
    assert plan.speeds == {"tiny_cnn": 1000.0} and plan.disk_needed > 0
    assert _all_runs() == []


def test_finished_cells_are_reused_and_a_half_trained_one_resumes(
    tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    args = tiny_args(tmp_path)
    assert main(["main", *args, "--models", "tiny_cnn", "--losses", "ce"]) == 0
    plan = make_plan(_config(tmp_path), measure=lambda cfg: 1000.0)
    status = {c.name: c.status for c in plan.cells}
    assert status == {
        "tiny_cnn-ce-balanced-s42": "reused",
        "tiny_cnn-ce-lt-s42": "reused",
        "tiny_cnn-bs-balanced-s42": "new",
        "tiny_cnn-bs-lt-s42": "new",
    }
    # a bs cell killed after its first epoch, its checkpoints on this disk
    cell = next(c for c in plan.cells if c.name == "tiny_cnn-bs-lt-s42")
    exp = mlflow.get_experiment_by_name(plan.experiment)
    client = mlflow.MlflowClient()
    run = client.create_run(exp.experiment_id, tags={schema.STEP: "train"})
    client.set_tag(run.info.run_id, schema.CONFIG_HASH, cell.config_hash)
    client.log_metric(run.info.run_id, schema.VAL_ACC1, 0.3, step=1)
    client.set_terminated(run.info.run_id, "KILLED")
    checkpoint_folder(tmp_path / "ckpt", run.info.run_id).mkdir(parents=True)
    before = len(_all_runs())
    capsys.readouterr()
    code = main(["plan", *args, "--models", "tiny_cnn", "--losses", "ce,bs", "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0 and shown["ready"] is True and len(_all_runs()) == before
    resumed = next(c for c in shown["cells"] if c["name"] == "tiny_cnn-bs-lt-s42")
    assert resumed["status"] == "resumed" and resumed["resume_epoch"] == 1
    new = next(c for c in shown["cells"] if c["name"] == "tiny_cnn-bs-balanced-s42")
    assert new["status"] == "new"
    reused = next(c for c in shown["cells"] if c["name"] == "tiny_cnn-ce-lt-s42")
    assert reused["seconds"] == 0.0


def test_the_thesis_offline_lists_what_is_missing_and_is_not_ready(
    tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    bench = tmp_path / "bench.json"
    speeds = {"resnet50": 900, "mobilenet_v2": 2000, "vit_b16": 700, "convnext_base": 400}
    bench.write_text(json.dumps([{"model": m, "pipeline_img_s": v} for m, v in speeds.items()]))
    args = ["--preset", "thesis", "--data-root", str(tmp_path / "data"), "--bench-file", str(bench)]
    assert main(["plan", *args]) == 1
    out = capsys.readouterr().out
    missing = [line for line in out.splitlines() if line.startswith("missing: ")]
    assert "cifar-100-python" in missing[0] and "download" in missing[0]
    weights = [line for line in missing if line.startswith("missing: weights: ")]
    assert len(weights) == 4 and any("vit_base_patch16_224" in w for w in weights)
    assert "56 cells: 56 new" in out and out.strip().endswith("see the missing lines above")
    assert main(["plan", *args, "--json"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["ready"] is False and len(shown["cells"]) == 56 and shown["seconds"] is None
    assert _all_runs() == []


def test_a_bad_bench_file_is_one_line_exit_2(
    tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps([{"model": "cifar_resnet8", "pipeline_img_s": 10}]))
    code = main(["plan", *tiny_args(tmp_path), "--models", "tiny_cnn", "--bench-file", str(bench)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no pipeline_img_s for tiny_cnn" in err[0]


def test_a_store_that_does_not_answer_is_a_missing_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://ltexp@127.0.0.1:{port}/none"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(url)  # over an earlier test's
    started = time.monotonic()
    try:
        code = main(["plan", *tiny_args(tmp_path), *("--models", "tiny_cnn", "--losses", "ce")])
    finally:
        mlflow.set_tracking_uri(previous)
    out = capsys.readouterr().out
    assert code == 1 and "missing: tracking store postgresql://" in out
    assert time.monotonic() - started < 60  # one probe, not MLflow's retries


@pytest.mark.slow
def test_the_estimate_is_within_a_factor_two_of_the_real_study(tmp_path: Path) -> None:
    """The issue's bar: the plan's estimate of a demo study against its real wall clock, on the
    same machine, each a fresh process as a user runs them."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    grid = ["--models", "tiny_cnn,cifar_resnet8", "--losses", "ce,bs"]
    args = [*tiny_args(tmp_path, epochs=4), *grid]

    def ltexp(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ltexp", *command, *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )

    planned = ltexp("plan", "--json")
    assert planned.returncode == 0, planned.stderr[-2000:]
    estimate = json.loads(planned.stdout)["seconds"]
    started = time.monotonic()
    done = ltexp("main")
    real = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    print(f"plan estimate {estimate:.0f} s, real {real:.0f} s")
    assert 0.5 <= real / estimate <= 2.0, (real, estimate)


def test_second_stages_are_planned_with_their_own_epochs(tmp_path: Path, tracking: str) -> None:
    """τ-norm trains nothing; LWS its 5 epochs (Kang et al.'s configs) over the training set."""
    cfg = _config(tmp_path, losses="ce", train_splits="lt", study_stage2="none,tau_norm,lws")
    plan = make_plan(cfg, measure=lambda cfg: 1000.0)
    by_stage = {c.identity.get("stage2", "none"): c for c in plan.cells}
    assert set(by_stage) == {"none", "tau_norm", "lws"}
    assert by_stage["none"].images == 2 * TRAIN_IMAGES["lt"]
    assert by_stage["tau_norm"].images == 0
    assert by_stage["lws"].images == 5 * TRAIN_IMAGES["lt"]
    assert all(c.status == "new" for c in plan.cells) and plan.seconds is not None


def test_a_linear_probe_is_planned_as_a_forward_mostly_cell(tmp_path: Path, tracking: str) -> None:
    """A linear probe's backward pass stops at the classifier: the same images, less time."""
    cfg = _config(tmp_path, losses="ce", train_splits="lt", finetunes="full,linear")
    plan = make_plan(cfg, measure=lambda cfg: 1000.0)
    by_mode = {c.identity.get("finetune", "full"): c for c in plan.cells}
    assert set(by_mode) == {"full", "linear"}
    assert by_mode["full"].images == by_mode["linear"].images == 2 * TRAIN_IMAGES["lt"]
    assert by_mode["linear"].seconds < by_mode["full"].seconds


@pytest.mark.parametrize(
    "options,message",
    [
        (["--checkpoint-dir", "/etc/passwd"], "checkpoint_dir '/etc/passwd' cannot be a writable"),
        (["--output-dir", "/proc/x"], "output_dir '/proc/x' cannot be a writable folder"),
        (["--data-run", "../../etc"], "data_run: run '../../etc' does not exist"),
    ],
)
def test_plan_refuses_what_the_commands_refuse(
    options: list[str],
    message: str,
    tmp_path: Path,
    tracking: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 39: plan said "ready to start" for inputs the commands refuse."""
    bench = tmp_path / "bench.json"
    bench.write_text('[{"model": "tiny_cnn", "pipeline_img_s": 500}]')
    args = [*tiny_args(tmp_path), "--models", "tiny_cnn", "--bench-file", str(bench)]
    code = main(["plan", *args, *options])
    out = capsys.readouterr().out
    assert code == 1 and f"missing: {message}" in out and "ready to start" not in out


@pytest.mark.parametrize(
    "content,message",
    [
        ("0", "must be a number of images per second above 0"),
        ("NaN", "must be a number of images per second above 0"),
        ("null", "must be a number of images per second above 0"),
        ('"fast"', "must be a number of images per second above 0"),
        ("[1, 2]", "must be a number of images per second above 0"),
        ("1" + "0" * 400, "must be a number of images per second above 0"),
        ("-5", "must be a number of images per second above 0"),
        ("Infinity", "must be a number of images per second above 0"),
        (None, "is nested too deeply"),
        ("fifo", "is not a regular file"),
        ("/dev/zero", "is not a regular file"),
    ],
)
def test_a_bench_file_is_checked_not_trusted(
    content: str | None,
    message: str,
    tmp_path: Path,
    tracking: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "bench.json"
    if content is None:
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif content == "fifo":
        os.mkfifo(path)
    elif content.startswith("/"):
        path = Path(content)
    else:
        path.write_text(f'[{{"model": "tiny_cnn", "pipeline_img_s": {content}}}]')
    code = main(["plan", *tiny_args(tmp_path), "--models", "tiny_cnn", "--bench-file", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_main_refuses_a_data_run_that_is_none_before_its_study_run_exists(
    tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["main", *tiny_args(tmp_path), "--models", "tiny_cnn", "--data-run", "../../etc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "run '../../etc' does not exist" in err[-1]
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_plan_of_the_thesis_on_a_cpu_answers_at_once_and_says_shared_advice_once(
    tmp_path: Path, tracking: str
) -> None:
    """Issue 42: offline, `ltexp plan --preset thesis` timed four ImageNet backbones on the
    CPU for 30 minutes (7 GB), then said 'unknown', with the same advice on five lines."""

    def never(cfg) -> float:
        raise AssertionError(f"{cfg.train.model} was timed on the CPU")

    cfg = build_config("thesis", {"data_root": str(tmp_path / "nothing"), "download": "false"})
    plan = make_plan(cfg, measure=never)
    text = plan.text()
    assert plan.seconds is None and "ImageNet-size backbones are not timed on a CPU" in text
    weights = [line for line in text.splitlines() if line.startswith("missing: weights")]
    if weights:  # offline: each names its file, the advice once after them
        assert all(line.endswith("(*)") for line in weights)
        assert sum(line.startswith("(*) pre-download them") for line in text.splitlines()) == 1
