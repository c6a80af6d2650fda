"""The ``ltexp`` command: one subcommand per MLflow entry point, plus ``bench``.

Options are the config keys (see ``ltexp.config``) with ``-`` for ``_``; the ``_`` spelling is
accepted too, because ``mlflow run -P key=value`` passes undeclared parameters as ``--key value``.
An empty value means "not given" (MLproject's defaults are empty strings). This module only
parses and dispatches: the work is in ``ltexp.steps`` (one MLflow run each) and ``ltexp.study``
(the study, a cell, a search, the plan).

Each command imports its module when it runs: the steps import torch and MLflow (about 4 s,
measured with ``python -X importtime``), which ``ltexp --help``, a refused option or ``ltexp
serve`` need not wait for (``import ltexp.cli`` is 0.06 s).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ltexp.config import (
    DEMO_PRESET,
    PROTOCOL_PRESET,
    Config,
    FieldSpec,
    build_config,
    command_fields,
)
from ltexp.errors import LtexpError

COMMANDS = (
    "prepare-data",
    "train",
    "evaluate",
    "aggregate",
    "main",
    "tune",
    "decouple",
    "ensemble",
)
COMMAND_HELP = {
    "prepare-data": "build the data splits of the protocol and record them (a prepare_data run)",
    "train": "fine-tune one model with one loss (a train run, then a child evaluate run)",
    "evaluate": "test a trained checkpoint on the balanced, long-tailed and group test sets",
    "aggregate": "build the report (Tables 4.1-4.11, Figures 4.1-4.6) from evaluate runs",
    "main": "run the whole study: prepare_data, every cell of the grid, aggregate",
    "tune": "search one cell's hyper-parameters on the validation set (Optuna; trials are runs)",
    "decouple": "re-balance a trained model's classifier: cRT, tau-normalisation or LWS "
    "(Kang et al. 2020; a decouple run registered as stage 2, then a child evaluate run)",
    "ensemble": "average registered models into one (an ensemble run, registered like any model, "
    "then a child evaluate run)",
    "plan": "say what `main` with the same options would run, reuse and resume, what it would "
    "cost on this device and what is missing, without creating any run (exit 1: not ready)",
    "bench": "measure training throughput (model-only ceiling vs ltexp's real training step), "
    "or where a whole study's wall clock goes (--study, --tune)",
    "serve": "serve a registered version with `mlflow models serve`, rebuilt from its verified "
    "safetensors weights and ltexp's code: the registry's TorchScript program never runs",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _describe_default(spec: FieldSpec) -> str:
    d = spec.default
    if isinstance(d, list | tuple):
        d = ",".join(str(v) for v in d)
    return "" if d in (None, "") else f" (default: {d})"


def _add_config_options(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--preset",
        default=None,
        help="preset in configs/ (demo, thesis) or a YAML file (default: "
        f"{default_preset(command)})",
    )
    parser.add_argument(
        "--experiment",
        default=argparse.SUPPRESS,
        help="MLflow experiment (default: the dataset's name, or the one `mlflow run` chose)",
    )
    for spec in command_fields(command):
        flags = [f"--{spec.key.replace('_', '-')}"]
        if "_" in spec.key:
            flags.append(f"--{spec.key}")
        if command == "prepare-data" and spec.key == "split_seed":
            flags.append("--seed")
        if command == "ensemble" and spec.key == "members":  # ltexp ensemble --model-uri A …
            flags += ["--model-uri", "--model_uri"]
        # a yes/no option alone means yes: `--percent` is `--percent true`; a list option may
        # be repeated: `--space a=… --space b=…` is `--space a=…,b=…`
        flag_alone = {"nargs": "?", "const": "true"} if spec.type is bool else {}
        if typing.get_origin(spec.type) is list:
            flag_alone = {"action": "append"}
        parser.add_argument(
            *flags,
            dest=spec.key,
            default=argparse.SUPPRESS,
            metavar="VALUE",
            help=(spec.help_text() + _describe_default(spec)).replace("%", "%%"),
            **flag_alone,
        )


def build_parser() -> argparse.ArgumentParser:
    """The full ``ltexp`` parser."""
    parser = _Parser(
        prog="ltexp",
        description="ltexp: long-tailed image classification study "
        "tracked in MLflow. Every option can also be set in a YAML preset.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        p = sub.add_parser(command, help=COMMAND_HELP[command], description=COMMAND_HELP[command])
        _add_config_options(p, command)
        if command in ("train", "evaluate", "main", "tune", "decouple", "ensemble"):
            p.add_argument(
                "--parent-run-id",
                "--parent_run_id",
                dest="parent_run_id",
                default=None,
                help=argparse.SUPPRESS,
            )
        if command == "train":  # a study's worker: the search whose values this cell uses
            p.add_argument("--tuned-from", dest="tuned_from", default=None, help=argparse.SUPPRESS)
        _add_verbose(p)
    plan = sub.add_parser("plan", help=COMMAND_HELP["plan"], description=COMMAND_HELP["plan"])
    _add_config_options(plan, "main")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON, for scripts")
    plan.add_argument(
        "--bench-file",
        "--bench_file",
        dest="bench_file",
        default="",
        help="speeds from `ltexp bench --json` (default: measure each backbone's training step, "
        "a few seconds each)",
    )
    _add_verbose(plan)
    bench = sub.add_parser("bench", help=COMMAND_HELP["bench"], description=COMMAND_HELP["bench"])
    from ltexp.bench import add_bench_arguments, bounded_int

    add_bench_arguments(bench)
    serve = sub.add_parser("serve", help=COMMAND_HELP["serve"], description=COMMAND_HELP["serve"])
    serve.add_argument(
        "--model-uri", "--model_uri", dest="model_uri", required=True, help="models:/<name>@<alias>"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    serve.add_argument(
        "--port", type=bounded_int(1, 65_535), default=5001, help="port (default 5001)"
    )
    _add_verbose(serve)
    return parser


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        nargs="?",
        const="true",
        default="",
        help="also print each epoch, each registration and libraries' notices (by default: "
        "one line per cell and per step, and warnings); -P verbose=true under mlflow run",
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"command", "preset", "parent_run_id", "tuned_from", "verbose", "json", "bench_file"}
    values = {k: ",".join(v) if isinstance(v, list) else v for k, v in vars(args).items()}
    return {k: v for k, v in values.items() if k not in skip and v != ""}


def command_config(args: argparse.Namespace) -> Config:
    """The resolved config of a parsed command line: its preset, then its options (what a
    worker process builds from the job a study hands it)."""
    return build_config(args.preset or default_preset(args.command), _overrides(args))


def default_preset(command: str) -> str:
    """``main`` runs the embedded demo (no download, a CPU is enough); every other command runs
    the protocol (CIFAR-100, the pretrained backbones) unless a preset says otherwise."""
    return DEMO_PRESET if command in ("main", "plan") else PROTOCOL_PRESET


def _print(line: str) -> None:
    print(line, flush=True)


def _tested(run_id: str, metrics: dict[str, float]) -> str:
    """``evaluate run: <id>  balanced 0.8123 [0.8011, 0.8231]  long-tailed …``: the report's
    five columns with their 95 % intervals, as the evaluation logged them."""
    from ltexp.schema import REPORT_COLUMNS

    shown = []
    for column, metric in REPORT_COLUMNS.items():
        if metric in metrics:
            low, high = metrics.get(f"{metric}_ci_low"), metrics.get(f"{metric}_ci_high")
            interval = f" [{low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
            shown.append(f"{column.replace('_', '-')} {metrics[metric]:.4f}{interval}")
    return f"evaluate run: {run_id}  " + "  ".join(shown)


def _print_stage2(result: Any) -> None:
    print(
        f"decouple run: {result.train.run_id}  best val_acc1 {result.train.best_val_acc1:.4f}  "
        f"model {result.train.model_uri}"
    )
    if result.evaluate_run_id:
        print(_tested(result.evaluate_run_id, result.metrics))


def _handlers() -> dict[str, Callable[[Config, argparse.Namespace], int]]:
    def prepare_data(cfg: Config, args: argparse.Namespace) -> int:
        from ltexp.steps.prepare_data import run_prepare_data

        print(f"prepare_data run: {run_prepare_data(cfg)}")
        return 0

    def train(cfg: Config, args: argparse.Namespace) -> int:
        from ltexp.study.run import run_cell

        tuned_from = getattr(args, "tuned_from", None)
        if tuned_from:
            from ltexp.tracking.questions import best_values_of

            cfg = cfg.replace(**best_values_of(tuned_from))
        result = run_cell(cfg, parent_run_id=args.parent_run_id, tuned_from=tuned_from)
        train = result.train
        if not train.model_uri:  # a data-parallel rank other than 0: rank 0 reports
            return 0
        print(
            f"train run: {train.run_id}  best val_acc1 {train.best_val_acc1:.4f} "
            f"(epoch {train.best_epoch})  model {train.model_uri}"
        )
        if result.evaluate_run_id:
            print(_tested(result.evaluate_run_id, result.metrics))
        if result.stage2 is not None:
            _print_stage2(result.stage2)
        return 0

    def evaluate(cfg: Config, args: argparse.Namespace) -> int:
        from ltexp.steps.evaluate import run_evaluate

        run_id, metrics = run_evaluate(cfg, parent_run_id=args.parent_run_id)
        print(_tested(run_id, metrics))
        return 0

    def aggregate(cfg: Config, args: argparse.Namespace) -> int:
        from ltexp.steps.aggregate import run_aggregate

        result = run_aggregate(cfg, announce=_print)
        print(f"aggregate run: {result.run_id}  report: {result.output_dir}")
        return 0

    def main_(cfg: Config, args: argparse.Namespace) -> int:
        from ltexp.study.run import run_study
        from ltexp.tracking.runs import LOCAL_UI

        result = run_study(cfg, parent_run_id=args.parent_run_id, progress=_print)
        print(f"study run: {result.run_id}  report: {result.report_dir}")
        local = result.results_view.startswith(LOCAL_UI)
        hint = "  (start `mlflow ui` in this folder first)" if local else ""
        print(f"results table: {result.results_view}{hint}")
        return 0

    def plan(cfg: Config, args: argparse.Namespace) -> int:
        from ltexp.study.plan import make_plan, record_on_launched_run

        result = make_plan(cfg, bench_file=args.bench_file)
        record_on_launched_run(result)
        print(result.to_json() if args.json else result.text())
        return 0 if result.ready else 1

    def tune(cfg: Config, args: argparse.Namespace) -> int:
        from ltexp.study.tune import run_tune

        result = run_tune(cfg, parent_run_id=args.parent_run_id, progress=_print)
        counts = ", ".join(f"{n} {s.lower()}" for s, n in result.states.items() if n)
        print(f"tune run: {result.run_id}  study {result.study_name}  trials: {counts}")
        return 0

    def decouple(cfg: Config, args: argparse.Namespace) -> int:
        from ltexp.study.run import run_stage2

        _print_stage2(run_stage2(cfg, parent_run_id=args.parent_run_id))
        return 0

    def ensemble(cfg: Config, args: argparse.Namespace) -> int:
        from ltexp.study.run import run_ensembled

        result = run_ensembled(cfg, parent_run_id=args.parent_run_id)
        built = result.train
        print(
            f"ensemble run: {built.run_id}  val_acc1 {built.best_val_acc1:.4f}  "
            f"model {built.model_uri}"
        )
        if result.evaluate_run_id:
            print(_tested(result.evaluate_run_id, result.metrics))
        return 0

    return {
        "decouple": decouple,
        "ensemble": ensemble,
        "prepare-data": prepare_data,
        "train": train,
        "evaluate": evaluate,
        "aggregate": aggregate,
        "main": main_,
        "tune": tune,
        "plan": plan,
    }


def _serve(args: argparse.Namespace) -> int:
    """``ltexp serve``: the version rebuilt and verified, saved aside, served by MLflow."""
    import subprocess
    import tempfile

    from ltexp.tracking.registered_models import save_served_model
    from ltexp.tracking.runs import prepare_store

    prepare_store()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        info = save_served_model(args.model_uri, folder)
        print(
            f"serving {args.model_uri} ({info.model}, {info.num_classes} classes, rebuilt from "
            f"its verified weights) at http://{args.host}:{args.port}/invocations",
            flush=True,
        )
        # uvicorn is started from PATH: this environment's, as `mlflow models serve` expects
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "PATH": path}
        # the program served is the one just written from verified weights: MLflow may read it
        # (ltexp's own processes refuse MLflow's pickle-format loading of anything else)
        env.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(folder)]
        command += ["--env-manager", "local", "-h", args.host, "-p", str(args.port)]
        # the server (MLflow's command and the uvicorn it starts) in a process group of its own,
        # stopped with this process: a terminated `ltexp serve` leaves no server running
        server = subprocess.Popen(command, env=env, start_new_session=True)

        def stop(signum: int, frame: Any) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        try:
            return server.wait()
        finally:
            stop(signal.SIGTERM, None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=30)


def _mlflow_error() -> type[Exception]:
    """MLflow's exception class, imported only once an error reaches ``except`` (the clause is
    evaluated then): ``ltexp --help`` and an option the parser refuses do not wait 3 s for
    MLflow."""
    from mlflow.exceptions import MlflowException

    return MlflowException


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ltexp`` command; return its exit status.

    The environment settings a command makes (MLflow's retries, its pickle guard) last as long
    as the command: a caller that runs ``main`` in its own process gets its environment back.
    """
    saved = dict(os.environ)
    try:
        return _main(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        from ltexp.timing import write_if_asked

        write_if_asked()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if str(getattr(args, "verbose", "")).lower() in ("true", "1", "yes"):
        os.environ["LTEXP_LOG_LEVEL"] = "INFO"  # the study's worker processes inherit it
    logging.basicConfig(
        level=os.environ.get("LTEXP_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # this call's stderr, also when main() runs again in one process
    )
    # one progress bar per artifact download drowns the log of a study
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # ltexp loads models from safetensors only; should anything reach MLflow's own loaders,
    # they refuse pickles too, whatever the caller's environment allows
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    # MLflow's INFO lines (database migrations, system-metrics threads) drown ltexp's own
    logging.getLogger("mlflow").setLevel(os.environ.get("LTEXP_MLFLOW_LOG_LEVEL", "WARNING"))
    # a store's failure is ltexp's one line (ltexp.tracking.runs.store_failure): MLflow's logged
    # SQLAlchemy tracebacks before it say the same, 20 times over when a server stops mid-run
    if os.environ.get("LTEXP_LOG_LEVEL", "WARNING") != "INFO":
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    try:
        if args.command == "bench":
            from ltexp.bench import run_bench

            return run_bench(args)
        if args.command == "serve":
            return _serve(args)
        cfg = command_config(args)
        from ltexp.tracking.runs import bounded_retries, prepare_store

        bounded_retries()
        if args.command != "plan":  # a store that does not answer is one line of the plan
            prepare_store()
        return _handlers()[args.command](cfg, args)
    except LtexpError as e:
        from ltexp.tracking.runs import redact, tag_refusal

        tag_refusal(str(e))
        print(f"ltexp {args.command}: error: {redact(str(e))}", file=sys.stderr)
        return e.exit_code
    except _mlflow_error() as e:  # the tracking server refused or could not be reached
        from ltexp.tracking.runs import store_failure

        print(f"ltexp {args.command}: error: {store_failure(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ltexp {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the machine's own failure (a full disk, a folder it may not write)
        from ltexp.tracking.runs import redact

        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        what = e.strerror or type(e).__name__
        hint = "; free space there, or set the artifact store or folder elsewhere"
        print(
            f"ltexp {args.command}: error: {redact(what + where)}"
            f"{hint if e.errno == errno.ENOSPC else ''}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
