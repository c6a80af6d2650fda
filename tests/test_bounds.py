"""Every number a user can type has a range, checked where it is parsed (issue 39, item 4): the
issue's examples are one line and exit status 2 from the command and from ``ltexp plan``, which
must not call them "ready to start"; no run is created."""

from __future__ import annotations

import typing
from pathlib import Path

import mlflow
import pytest

from ltexp.cli import main
from ltexp.config import all_fields

HUGE = "9" * 5000

EXAMPLES = [
    (["--lora-rank", "1000000000", "--finetune", "lora"], "lora_rank must be <= 1024"),
    (["--seed", str(2**70)], "seed must be <= 4294967295, got an integer of about 21 digits"),
    (["--finetune", f"freeze:{HUGE}"], "as a whole number from 1 to 999"),
    (["--finetune", "freeze:²"], "as a whole number from 1 to 999"),
    (["--image-size", "100000"], "image_size must be <= 4096"),
    (["--num-threads", "100000"], "num_threads must be <= 1024"),
    (["--seed", HUGE], "seed: expected an integer, got 5000 characters"),
]


def _runs() -> int:
    return len(mlflow.search_runs(search_all_experiments=True, output_format="list"))


@pytest.mark.parametrize("command", ["train", "plan"])
@pytest.mark.parametrize("args,message", EXAMPLES, ids=[a[0] + a[1][:12] for a, _ in EXAMPLES])
def test_a_number_out_of_range_is_one_line_from_the_command_and_from_plan(
    command: str,
    args: list[str],
    message: str,
    tracking: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    code = main([command, "--preset", "demo", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert "ready to start" not in err[0]
    assert _runs() == 0


def test_a_yaml_preset_with_a_5000_digit_integer_is_one_line(
    tmp_path: Path, tracking: str, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = tmp_path / "big.yaml"
    preset.write_text(f"train:\n  seed: {HUGE}\n")
    code = main(["plan", "--preset", str(preset)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "holds a value no option can take" in err[0], err


@pytest.mark.parametrize(
    "value,message",
    [("-1", "expected a whole number from 1 to 100000"), (HUGE, "expected a whole number")],
)
def test_bench_steps_out_of_range_is_one_line(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as code:
        main(["bench", "--steps", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code.value.code == 2 and message in err[-1] and len(err[-1]) < 200


def test_every_numeric_option_has_a_range_both_ways() -> None:
    unbounded = []
    for spec in all_fields().values():
        tp = spec.type
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base = args[0] if args else tp
        if typing.get_origin(base) in (list, tuple):
            base = typing.get_args(base)[0]
        if base in (int, float) and (spec.low is None or spec.high is None):
            unbounded.append(spec.key)
    assert unbounded == []
