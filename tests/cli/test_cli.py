"""The ``ltexp`` command: help, option spelling, and bad input (one line, exit 2, no run)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.projects import _project_spec

from ltexp.cli import build_parser, main
from tests.conftest import tiny_args


def _args(overrides: dict[str, object]) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def _count_runs() -> int:
    return len(mlflow.search_runs(search_all_experiments=True, output_format="list"))


@pytest.mark.parametrize(
    ("argv", "status"),
    [(["--help"], 0), (["train", "--help"], 0), (["train", "--no-such-option", "1"], 2)],
    ids=str,
)
def test_help_and_unknown_options_do_not_wait_for_mlflow(argv: list[str], status: int) -> None:
    """MLflow takes 3 s to import: asking for help, or an option that does not exist, never
    loads it."""
    probe = (
        "import sys\n"
        "from ltexp.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code)\n"
        "print('mlflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.splitlines()[-2:] == [f"exit {status}", "False"]


def test_help_explains_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ltexp", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in (
        "--model",
        "--loss",
        "--train-split",
        "--lr",
        "--batch-size",
        "--device",
        "--deterministic",
        "--focal-gamma",
        "--ldam-max-margin",
        "--resume",
    ):
        assert option in out
    assert "default: 0.001" in out


def test_a_yes_no_option_alone_means_yes() -> None:
    parser = build_parser()
    assert parser.parse_args(["aggregate", "--percent"]).percent == "true"
    assert parser.parse_args(["aggregate", "--percent", "false"]).percent == "false"


def test_underscore_spelling_is_accepted() -> None:
    parser = build_parser()
    a = parser.parse_args(["train", "--batch_size", "8"])
    b = parser.parse_args(["train", "--batch-size", "8"])
    assert a.batch_size == b.batch_size == "8"


BAD_TRAIN = [
    ({"model": "resnet5"}, "unknown model 'resnet5'"),
    ({"loss": "focall"}, "unknown loss 'focall'"),
    ({"train_split": "tail"}, "unknown train_split value 'tail'"),
    ({"lr": "0"}, "lr must be > 0"),
    ({"optimizer": "sgd", "lr": "1e10"}, "lr must be <= 10"),  # issue 24: no run is left
    ({"epochs": "0"}, "epochs must be >= 1"),
    ({"batch_size": "0"}, "batch_size must be >= 1"),
    ({"device": "cuda"}, "no CUDA GPU"),
    ({"data_run": "0123456789abcdef0123456789abcdef"}, "does not exist"),
    ({"imbalance_ratio": "0.2"}, "imbalance_ratio must be >= 1"),
    ({"dataset": "cifar1000"}, "unknown dataset 'cifar1000'"),
    ({"sampler": "balanced"}, "unknown sampler 'balanced'"),
    ({"mixing": "cutmx"}, "unknown mixing 'cutmx'"),
    ({"stage2": "crtt"}, "unknown stage2 value 'crtt'"),
    # issue 29: how much to fine-tune, normalisation, the recipe's options
    (
        {"model": "cifar_resnet8", "finetune": "freeze:9"},
        "finetune=freeze:9: cifar_resnet8 has 4 stages; freeze:<k> takes k from 1 to 4",
    ),
    ({"finetune": "partial"}, "unknown finetune 'partial'; valid: full, linear, freeze:<k>"),
    ({"finetune": "freeze:0"}, "freeze:<k> needs k, the number of stages frozen"),
    ({"normalize": "weights"}, "normalize=weights: tiny_cnn has no pretrained weights"),
    ({"normalize": "imagenet"}, "unknown normalize value 'imagenet'"),
    ({"llrd": "1.5"}, "llrd must be <= 1"),
    ({"lora_rank": "0"}, "lora_rank must be >= 1"),
    (
        {"loss": "focal", "label_smoothing": "0.1"},
        "label_smoothing=0.1 applies to the softmax cross-entropy losses",
    ),
    ({"warmup_epochs": "2", "epochs": "2"}, "warmup_epochs=2 must be below epochs=2"),
]


@pytest.mark.parametrize(
    "bad,message", BAD_TRAIN, ids=[f"{next(iter(b))}-{i}" for i, (b, _) in enumerate(BAD_TRAIN)]
)
def test_bad_train_input_is_one_line_exit_2_and_no_run(
    bad: dict, message: str, tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    code = main(["train", *tiny_args(tmp_path, **bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0], err
    assert _count_runs() == 0


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"n_max_train": "200"}, "fewer than n_max_train"),
        ({"n_max_test": "-3"}, "n_max_test must be >= 1"),
        ({"profile": "zipf"}, "unknown imbalance profile 'zipf'"),
    ],
)
def test_bad_prepare_data_input(
    bad: dict, message: str, tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    code = main(["prepare-data", "--preset", "demo", *_args(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert _count_runs() == 0


def test_data_root_that_is_a_file(
    tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "f").write_text("x")
    code = main(["prepare-data", "--dataset", "cifar100", "--data-root", str(tmp_path / "f")])
    assert code == 2 and "is a file" in capsys.readouterr().err
    assert _count_runs() == 0


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--no-such-option", "1"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_evaluate_needs_a_target(
    tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["evaluate", "--preset", "demo"]) == 2
    assert "train_run=" in capsys.readouterr().err
    assert main(["evaluate", "--model-uri", "models:/nope@champion"]) == 2
    assert "no registered model 'nope'" in capsys.readouterr().err
    assert main(["evaluate", "--train-run", "0" * 32]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_aggregate_of_an_empty_experiment(
    tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    mlflow.create_experiment("empty")
    assert main(["aggregate", "--experiment", "empty"]) == 2
    assert "no FINISHED evaluate runs" in capsys.readouterr().err
    assert main(["aggregate", "--experiment", "missing"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_study_lists_every_unknown_name_before_running(
    tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    grid = ["--models", "tiny_cnn,resnet5", "--losses", "ce,foo", "--train-splits", "lt,tail"]
    axes = ["--samplers", "instance,balanced", "--study-mixing", "none,cutmx"]
    code = main(["main", *grid, *axes, "--study-stage2", "none,crtt"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'resnet5'" in err and "'foo'" in err and "'tail'" in err
    assert "'balanced'" in err and "'cutmx'" in err and "'crtt'" in err
    assert _count_runs() == 0


_TRAIN_KEYS = [
    "--lr",
    "--epochs",
    "--batch-size",
    "--model",
    "--loss",
    "--seed",
    "--betas",
    "--deterministic",
    "--imbalance-ratio",
    "--focal-gamma",
    "--train-split",
]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_TRAIN_KEYS),
            st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
        ),
        max_size=4,
    )
)
def test_fuzz_cli_parser_never_crashes(pairs: list[tuple[str, str]]) -> None:
    from ltexp.cli import _overrides
    from ltexp.config import build_config
    from ltexp.errors import ConfigError

    argv = ["train"] + [f"{k}={v}" for k, v in pairs]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        assert e.code == 2
        return
    with contextlib.suppress(ConfigError):
        build_config(args.preset, _overrides(args))


def test_input_refused_under_mlflow_run_says_why_on_its_run(
    tracking: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``mlflow run -e evaluate`` with no target: MLflow marks its run FAILED; ltexp tags why."""
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    capsys.readouterr()  # the store's creation
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    assert main(["evaluate", "--preset", "demo"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert "train_run=" in mlflow.get_run(run_id).data.tags["ltexp.error"]


def test_a_password_in_the_tracking_uri_is_never_printed(
    tracking: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import mlflow as _mlflow

    uri = "http://alice:s3cret@127.0.0.1:9"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    _mlflow.set_tracking_uri(uri)
    code = main(["evaluate", "--preset", "demo", "--train-run", "0" * 32])
    out = capsys.readouterr()
    assert code != 0 and "s3cret" not in out.err + out.out
    assert "http://***@127.0.0.1:9" in out.err


def _bad_file(tmp_path: Path, name: str) -> str:
    """Files a careless user might hand over."""
    path = tmp_path / name
    if name == "notes.txt":
        path.write_text("not weights\n")
    elif name == "dup.yaml":
        path.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    elif name == "latin1.yaml":
        path.write_bytes("train:\n  model: caf\xe9\n".encode("latin-1"))
    elif name == "deep.yaml":
        path.write_text("a: " + "[" * 20000 + "]" * 20000 + "\n")
    return str(path)


ROUND_TWO = [
    # (command, options, message)
    ("train", {"betas": "1,1"}, "betas must be < 1"),
    ("main", {"seeds": "-1"}, "seeds must be >= 0"),
    ("train", {"image_size": "100000"}, "image_size must be <= 4096"),
    ("train", {"image_size": "4096", "batch_size": "60000"}, "needs about"),
    ("prepare-data", {"dataset": "synthetic", "synthetic_image_size": "100000"}, "must be <= 1024"),
    (
        "prepare-data",
        {"dataset": "synthetic", "synthetic_image_size": "1024", "synthetic_classes": "5000"},
        "needs about",
    ),
    ("evaluate", {"bootstrap_samples": "1000000000"}, "bootstrap_samples must be <= 100000"),
    ("train", {"pretrained": "notes.txt"}, "is not a plain state dict of tensors"),
    ("train", {"pretrained": "true"}, "have no pretrained weights"),
    ("train", {"checkpoint_dir": "/etc/passwd/x"}, "cannot be a writable folder"),
    ("train", {"preset": "dup.yaml"}, "key 'lr' is given twice"),
    ("train", {"preset": "latin1.yaml"}, "is not UTF-8 text"),
    ("train", {"preset": "deep.yaml"}, "nested too deeply"),
    ("train", {"experiment": "   "}, "experiment is blank"),
    ("train", {"experiment": "two\nlines"}, "must be one line"),
    ("aggregate", {"output_dir": "/proc/x", "experiment": "e"}, "cannot be written"),
]


@pytest.mark.parametrize(
    "command,options,message", ROUND_TWO, ids=[f"{c}-{next(iter(o))}" for c, o, _ in ROUND_TWO]
)
def test_careless_input_is_one_line_and_leaves_nothing(
    command: str,
    options: dict,
    message: str,
    tmp_path: Path,
    tracking: str,
    capsys: pytest.CaptureFixture,
) -> None:
    if command == "aggregate":  # an experiment with a result, so only the folder is wrong
        with mlflow.start_run(experiment_id=mlflow.create_experiment("e")):
            mlflow.set_tag("ltexp.step", "evaluate")
            mlflow.log_params(dict.fromkeys(("dataset", "model", "loss", "train_split"), "x"))
            mlflow.log_params({"seed": 1, "tau": 0})
    before = _count_runs()
    capsys.readouterr()  # the store's creation
    options = {
        k: _bad_file(tmp_path, v) if "." in v and "/" not in v else v for k, v in options.items()
    }
    preset = options.pop("preset", "demo")
    args = [command, "--preset", preset]
    if command == "train":
        args += tiny_args(tmp_path, epochs=1)[2:]
    args += _args(options)
    files = set(tmp_path.rglob("*"))
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[-1], err
    assert _count_runs() == before
    assert {p for p in set(tmp_path.rglob("*")) - files if p.name != "mlflow.db"} == set()


def test_default_output_is_one_line_per_cell_and_step_and_v_adds_the_rest(
    tmp_path: Path, tracking: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """The issue's demo printed 372 lines for 28 cells: every epoch, two registration lines per
    cell, libraries' INFO lines. Now: a line per cell and per step; -v shows the rest."""
    monkeypatch.delenv("LTEXP_LOG_LEVEL", raising=False)  # as a user's shell has it
    grid = ["--models", "tiny_cnn", "--losses", "ce,bs", "--train-splits", "lt"]
    assert main(["main", *tiny_args(tmp_path), *grid]) == 0
    out, err = capfd.readouterr()
    lines = (out + err).strip().splitlines()
    assert [line for line in lines if line.startswith("[")] == [
        line for line in lines if re.match(r"\[\d/2\] tiny_cnn-(ce|bs)-lt-s42: trained", line)
    ]
    assert len(lines) <= 2 + 4, lines  # 2 cells; data, report, study and results-table lines
    assert not [line for line in lines if "epoch 1/2" in line or "Successfully" in line]
    assert main(["main", *tiny_args(tmp_path), *grid, "--force", "--verbose"]) == 0
    verbose = capfd.readouterr()
    shown = verbose.out + verbose.err
    assert shown.count("epoch 2/2") == 2 and "Created version '2'" in shown


def test_a_command_that_tests_a_model_prints_its_test_result(
    tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    """Issue 42: train, decouple, ensemble and evaluate printed run ids but no test result."""
    assert main(["train", *tiny_args(tmp_path, epochs=1)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("evaluate run: "))
    columns = r"balanced \d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\]  long-tailed \d\.\d{4} \["
    assert re.search(columns, line) and "tail " in line, line


@pytest.mark.parametrize("entry", ["aggregate", "evaluate"])
def test_mlflow_echoes_no_preset_for_a_step_that_reads_what_was_trained(entry: str) -> None:
    """`mlflow run . -e aggregate` after the demo echoed `--preset thesis`: the steps that read a
    study or a model declare no preset, so the echoed command names only the options given."""
    project = _project_spec.load_project(str(Path(__file__).resolve().parents[2]))
    point = project.get_entry_point(entry)
    assert "--preset" not in point.compute_command({}, None)
    given_demo = point.compute_command({"preset": "demo"}, None)
    assert given_demo == f"python entrypoints/{entry}.py --preset demo"
    assert project.get_entry_point("train").compute_command({}, None).endswith("--preset thesis")
