"""Runs: create, resume, find and close them, with ltexp's tags and status rules.

Only public MLflow APIs are used (``mlflow.start_run``, ``MlflowClient``). A run ends FINISHED,
FAILED (any exception; the reason in the ``ltexp.error`` tag) or KILLED (Ctrl-C). A run left
RUNNING by a process that died is found and marked FAILED by the next ltexp command that looks
at its experiment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import mlflow
import sqlalchemy
from mlflow.entities import Metric, Run, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from sqlalchemy import exc

from ltexp import locks, schema
from ltexp.cells import code_version, identity_from_params
from ltexp.config import all_fields, convert
from ltexp.errors import ConfigError, LtexpError, RunStopped, TrackingError
from ltexp.markdown import markdown_text

log = logging.getLogger(__name__)
_ASYNC_PENDING = False  # metrics queued by log_epoch and not yet flushed

# MLflow's own defaults retry a request for minutes (7 retries, backoff ×2, 120 s timeouts), and
# then every queued request again: a command whose server is gone for good would not end.
# ltexp bounds them (unless set): a request gives up after about 30 s of backoff (a few minutes
# if the server hangs), and once one has given up, the rest fail fast (give_up_on_server).
RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
FLUSH_SECONDS = 180.0  # the longest wait for queued metrics before the server counts as gone
HEARTBEAT_SECONDS = 60.0  # a live process refreshes its runs' heartbeat this often
STALE_SECONDS = 600.0  # a RUNNING run whose heartbeat is older belongs to a dead process
ERROR_CHARS = 2000  # an ltexp.error tag holds the whole line (the way out is at its end)


def env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def bounded_retries() -> None:
    """Apply :data:`RETRY_DEFAULTS` where the environment sets nothing else; with credentials in
    the tracking URI, keep MLflow from printing run URLs (they would carry the password), and
    take the credentials out of every log line (MLflow's own print the URI on each retry)."""
    for key, value in RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if redact(mlflow.get_tracking_uri()) != mlflow.get_tracking_uri():
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    redact_logs()


class _Redacting(logging.Filter):
    """Takes the ``user:password@`` of any URL out of a log record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def redact_logs() -> None:
    """Every handler of the root logger and of MLflow's (which does not propagate) redacts
    credentials from what it writes, whichever library's logger the line comes from."""
    for name in ("", "mlflow"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _Redacting) for f in handler.filters):
                handler.addFilter(_Redacting())


def give_up_on_server() -> None:
    """The server is gone: every later request of this process fails at once, so the command
    ends with its one line instead of retrying each queued request for minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"


def prepare_store() -> None:
    """Create a local sqlite store's tables once, however many ltexp processes start on it at
    the same moment (MLflow's schema migration is not safe to run twice at once); check that a
    database store answers before MLflow retries it for minutes.

    Raises:
        TrackingError: a database store that cannot be reached (one line, its reason).
    """
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("postgresql", "mysql", "mssql")):
        check_database(uri, "the tracking store")
        return
    if not uri.startswith("sqlite:///"):
        return
    with locks.held("store", uri.removeprefix("sqlite:///")):
        client().search_experiments(max_results=1)  # creates or migrates the tables


def check_database(url: str, what: str, timeout: int = 10) -> None:
    """Connect to a database once, within ``timeout`` seconds.

    Raises:
        TrackingError: not a database URL SQLAlchemy knows, a driver that is not installed, a
            server that does not answer, a database that does not exist, credentials refused.
    """
    shown = redact(url)
    args = {"connect_timeout": timeout} if url.startswith(("postgresql", "mysql")) else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=args)
    except ImportError as e:  # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, as MLflow
        raise TrackingError(
            f"{what} {shown!r} needs the database driver {getattr(e, 'name', '') or e}, which is "
            f"not installed; install it, or name the one that is: postgresql+psycopg2://… "
            f"(pip install 'ltexp[server]' installs psycopg2)"
        ) from None
    except (exc.ArgumentError, exc.NoSuchModuleError, ValueError) as e:
        raise TrackingError(
            f"{what} {shown!r} is not a database URL ltexp can use ({error_line(e)[:120]});"
            f" give sqlite:///<file> or postgresql://<host>:<port>/<database>"
        ) from None
    try:
        with engine.connect():
            pass
    except exc.SQLAlchemyError as e:
        lines = str(getattr(e, "orig", e) or e).strip().splitlines()
        reason = redact(lines[0] if lines else type(e).__name__)[:160]
        raise TrackingError(
            f"{what} {shown!r} cannot be reached ({reason}); check that its server runs "
            f"and the database exists"
        ) from None
    finally:
        engine.dispose()


def client() -> MlflowClient:
    """A client for the current tracking URI."""
    return MlflowClient()


def experiment_id(name: str) -> str:
    """Id of experiment ``name``, created if missing (safe when several processes race), marked
    as model training for the UI (:func:`mark_model_training`)."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(
                f"experiment {name!r} is deleted; restore it "
                f"(mlflow experiments restore) or choose another name"
            )
        if schema.EXPERIMENT_KIND_TAG not in exp.tags:
            mark_model_training(exp.experiment_id)
        return exp.experiment_id
    try:
        created = c.create_experiment(
            name, tags={schema.EXPERIMENT_KIND_TAG: schema.MODEL_TRAINING_KIND}
        )
    except mlflow.exceptions.MlflowException:
        exp = c.get_experiment_by_name(name)  # another process created it first
        if exp is None:
            raise
        return exp.experiment_id
    return created


def mark_model_training(experiment_id: str) -> None:
    """Tell MLflow 3's UI that the experiment trains models: it then opens on the runs table,
    not on the GenAI traces dashboard (the experiment tag ``mlflow.experimentKind``, as the
    UI's own experiment-type switch sets it)."""
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # a reader may not tag
        client().set_experiment_tag(
            experiment_id, schema.EXPERIMENT_KIND_TAG, schema.MODEL_TRAINING_KIND
        )


def launched_run_id() -> str | None:
    """The run ``mlflow run`` created for this process (``MLFLOW_RUN_ID``), if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def launched_run_for(
    experiment_id: str, params: dict[str, str] | None = None
) -> tuple[str | None, str | None]:
    """``(run to use, wrapper to link)``: the run ``mlflow run`` created for this process if it
    is in ``experiment_id`` and holds none of ``params`` with another value; else None, and that
    run as a wrapper to point at the real one (:func:`link_wrapper`), so a step's run stays with
    the experiment it belongs to and records what it did (``mlflow run`` logs ``-P model_uri`` as
    typed, an alias, where evaluate records the version it resolved to)."""
    launched = launched_run_id()
    if not launched:
        return None, None
    run = client().get_run(launched)
    differs = any(run.data.params.get(k, v) != v for k, v in (params or {}).items())
    if run.info.experiment_id == experiment_id and not differs:
        return launched, None
    return None, launched


def link_wrapper(wrapper: str | None, run_id: str) -> None:
    """Make an `mlflow run` wrapper run (left in the experiment ``mlflow run`` chose) explain
    itself: tagged with the run that did its work, named after it, and described with a link.
    The finished wrappers of earlier commands in that experiment are deleted (MLflow's soft
    delete: the UI's "deleted" filter and ``mlflow runs restore`` still reach them), so at most
    the latest one stays in, say, "Default"; failed ones keep their error in sight. This one
    cannot go now: `mlflow run` ends it after this process exits and refuses a deleted run."""
    if not wrapper:
        return
    c = client()
    work = c.get_run(run_id)
    experiment = c.get_experiment(work.info.experiment_id).name
    step = work.data.tags.get(schema.STEP, "step")
    c.set_tag(wrapper, schema.RESUMED_INTO, run_id)
    c.set_tag(wrapper, schema.RUN_NAME_TAG, f"mlflow-run-{work.info.run_name}")
    c.set_tag(
        wrapper,
        schema.DESCRIPTION_TAG,
        f"Started by `mlflow run`; ltexp's {step} run is "
        f"[{work.info.run_name}]({ui_link(work.info.experiment_id, run_id)}) in experiment "
        f"{experiment!r}, which it belongs with. This run holds nothing else.",
    )
    earlier = c.search_runs(
        [c.get_run(wrapper).info.experiment_id],
        f"tags.`{schema.RESUMED_INTO}` LIKE '%' AND attributes.status = 'FINISHED'",
        max_results=100,  # a bounded sweep: the rest go with the next commands
    )
    for run in earlier:
        if run.info.run_id != wrapper:
            with contextlib.suppress(mlflow.exceptions.MlflowException):  # a reader may not
                c.delete_run(run.info.run_id)


def ui_link(experiment_id: str, run_id: str, artifact: str = "") -> str:
    """The MLflow UI's address of a run (or of one of its artifacts), relative to the UI's
    root: a link that works in a run's description on any server."""
    link = f"#/experiments/{experiment_id}/runs/{run_id}"
    return f"{link}/artifacts/{artifact}" if artifact else link


def save_results_view(experiment_id: str) -> str:
    """Save the experiment's results view and return its UI address (relative to the UI's root):
    the train runs, flat (the study's parent row is filtered out, so nothing is collapsed), with
    the cell params and the headline test metrics as columns, best balanced-test accuracy first.
    It is written again by every study (it names no run, so one view serves them all)."""
    balanced = schema.HEADLINE_TEST_METRICS[0]
    state = {
        "searchFilter": f"tags.`{schema.STEP}` = '{schema.Step.TRAIN.value}'",
        "orderByKey": f"metrics.`{balanced}`",
        "orderByAsc": False,
        "selectedColumns": [
            *(f"params.`{p}`" for p in schema.CELL_PARAMS if p != "dataset"),
            *(f"metrics.`{m}`" for m in schema.HEADLINE_TEST_METRICS),
        ],
        "chartsSearchFilter": "test_",  # the chart mode: test metrics, not the epochs' curves
    }
    client().set_experiment_tag(
        experiment_id, schema.SHARED_VIEW_PREFIX + schema.RESULTS_VIEW, json.dumps(state)
    )
    # workflowType: the "Model training" side of the UI, which shows the runs table
    return (
        f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={schema.RESULTS_VIEW}"
    )


LOCAL_UI = "http://127.0.0.1:5000/"  # `mlflow ui`'s default address


def ui_address(path: str) -> str:
    """A UI path as an address to open: on the tracking server when there is one, else on the
    local `mlflow ui` (its default address)."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"{safe_uri(uri).rstrip('/')}/{path}"
    return f"{LOCAL_UI}{path}"


def add_to_description(run_id: str, text: str) -> None:
    """Append a paragraph (Markdown) to a run's description, once."""
    c = client()
    now = c.get_run(run_id).data.tags.get(schema.DESCRIPTION_TAG, "")
    if text in now:  # a resumed run
        return
    c.set_tag(run_id, schema.DESCRIPTION_TAG, f"{now}\n\n{text}" if now else text)


def tag_refusal(reason: str) -> None:
    """Give the `mlflow run` run of this process, if no step claimed it, the reason it is about
    to be marked FAILED (a refused input exits before any step starts)."""
    launched = launched_run_id()
    if launched:
        with contextlib.suppress(Exception):
            client().set_tag(launched, schema.ERROR, redact(reason)[:ERROR_CHARS])


def launched_experiment_id() -> str | None:
    """The experiment ``mlflow run`` chose (``MLFLOW_EXPERIMENT_ID``), if any."""
    return os.environ.get("MLFLOW_EXPERIMENT_ID") or None


def safe_uri(uri: str | None = None) -> str:
    """The tracking URI (default: the current one) without credentials, fit to print."""
    return redact(uri or mlflow.get_tracking_uri())


def redact(text: str) -> str:
    """``text`` with ``user:password@`` in any URL replaced by ``***@``."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", text)


def default_experiment(preset: str, dataset: str) -> str:
    """The experiment of a config when none is given (:func:`schema.default_experiment_name`)."""
    return schema.default_experiment_name(preset, dataset)


def experiment_name(name: str, default: str) -> str:
    """The experiment a command uses: ``name``, else the one ``mlflow run`` chose, else
    ``default``."""
    if name:
        return name
    launched = launched_experiment_id()
    if launched:
        return client().get_experiment(launched).name
    return default


def resolve_experiment(name: str, default: str) -> str:
    """Experiment id: ``name`` if given, else the one ``mlflow run`` chose, else ``default``."""
    if name:
        return experiment_id(name)
    launched = launched_experiment_id()
    if launched:
        exp = client().get_experiment(launched)
        if schema.EXPERIMENT_KIND_TAG not in exp.tags:
            mark_model_training(launched)
        return launched
    if mlflow.active_run() is not None:
        return mlflow.active_run().info.experiment_id
    return experiment_id(default)


def search_all(
    experiment_ids: list[str] | None, filter_string: str = "", order_by: list[str] | None = None
) -> list[Run]:
    """Every run that matches (paginated: not capped at the first 1,000)."""
    c = client()
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in c.search_experiments()]
    runs: list[Run] = []
    token = None
    while True:
        page = c.search_runs(
            experiment_ids,
            filter_string,
            max_results=5000,
            order_by=order_by or ["attributes.start_time DESC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def get_run(run_id: str, step: schema.Step | tuple[schema.Step, ...] | None = None) -> Run:
    """The run ``run_id``; with ``step`` (one or several), refuse a run of another step."""
    try:
        run = client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise TrackingError(f"run {run_id!r} does not exist on {safe_uri()}") from None
    steps = (step,) if isinstance(step, schema.Step) else step
    if steps and run.data.tags.get(schema.STEP) not in {s.value for s in steps}:
        got = run.data.tags.get(schema.STEP, "not an ltexp run")
        names = [s.value for s in steps]
        wanted = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names)
        article = "an" if got[0] in "aeiou" else "a"
        raise TrackingError(f"run {run_id!r} is {article} {got} run, not a {wanted} run")
    return run


def recorded_identity(run: Run) -> dict[str, Any]:
    """The identity a train or decouple run recorded (its ``ltexp.identity`` tag), read back
    from its params when it predates the tag or the tag is not an identity (a hand-edited or
    hostile one); empty for a run that has neither (a run another tool logged)."""
    text = run.data.tags.get(schema.IDENTITY)
    if text:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
    return identity_from_params(run.data.params)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HEARTBEATS: dict[str, Any] = {}


def _start_heartbeat(run_id: str) -> None:
    """Refresh the run's heartbeat tag every ``LTEXP_HEARTBEAT_SECONDS`` while it is open, so
    another host can tell a live run from a dead one."""
    stop = threading.Event()
    every = env_seconds("LTEXP_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS)

    def beat() -> None:
        while not stop.wait(every):
            with contextlib.suppress(Exception):
                client().set_tag(run_id, schema.HEARTBEAT, f"{time.time():.0f}")

    threading.Thread(target=beat, daemon=True, name=f"heartbeat-{run_id[:8]}").start()
    _HEARTBEATS[run_id] = stop


def _stop_heartbeat(run_id: str) -> None:
    stop = _HEARTBEATS.pop(run_id, None)
    if stop is not None:
        stop.set()


def process_tags() -> dict[str, str]:
    """Tags that tie a run to the live process writing it (see :mod:`ltexp.tracking.claims`)."""
    return {
        schema.HOST: socket.gethostname(),
        schema.PID: str(os.getpid()),
        schema.HEARTBEAT: f"{time.time():.0f}",
        schema.CODE_VERSION: code_version(),
    }


# what a store's failure says, and what would be right (the first match wins)
_STORE_FAILURES = (
    (
        ("readonly database", "read-only file system"),
        "is read-only ({reason}): make the store's file and its folder writable, or choose "
        "another store (MLFLOW_TRACKING_URI)",
    ),
    (
        ("database or disk is full", "no space left on device", "disk full"),
        "is on a full disk ({reason}): free space there; the same command resumes",
    ),
    (
        (
            "could not connect",
            "connection refused",
            "server closed the connection",
            "terminating connection",
            "connection reset",
            "max retries exceeded",
            "connection aborted",
        ),
        "stopped answering ({reason}): start it again; the same command resumes",
    ),
)
# lines of SQLAlchemy's and MLflow's messages that say nothing of the cause
_NOISE = ("(raised as a result of", "[sql:", "[parameters:", "(background on this error")


def store_failure(e: BaseException) -> str:
    """One line for a tracking store's failure: what is wrong (read-only, a full disk, a
    server that stopped answering) and what would be right, from the innermost cause's words
    rather than the first line of a SQLAlchemy message ("raised as a result of Query-invoked
    autoflush")."""
    texts = []
    current: BaseException | None = e
    while current is not None and len(texts) < 10:
        texts.append(str(getattr(current, "orig", None) or current))
        current = current.__cause__ or current.__context__
    lines = [
        line.strip()
        for text in texts
        for line in text.splitlines()
        if line.strip() and not line.strip().lower().startswith(_NOISE)
    ]
    reason = redact(lines[0] if lines else type(e).__name__)
    everything = " ".join(texts).lower()
    for words, what in _STORE_FAILURES:
        hit = next((w for w in words if w in everything), None)
        if hit:
            cause = next((line for line in lines if hit in line.lower()), reason)
            cause = cause.removeprefix("(sqlite3.OperationalError) ").strip()
            return f"the tracking store {safe_uri()} " + what.format(reason=redact(cause)[:160])
    return f"tracking server {safe_uri()}: {reason[:300]}"


def error_line(e: BaseException) -> str:
    """One line describing an exception, for the ``ltexp.error`` tag (credentials removed)."""
    text = redact(str(e).strip().splitlines()[0]) if str(e).strip() else ""
    if isinstance(e, LtexpError):
        return text[:ERROR_CHARS]
    return f"{type(e).__name__}: {text}"[:ERROR_CHARS]


@contextlib.contextmanager
def step_run(
    step: schema.Step,
    *,
    experiment_id: str,
    run_name: str | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    description: str | None = None,
    system_metrics: bool = False,
    wrapper: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume, with ``run_id``) the run of one step and close it with the right status.

    FINISHED on success; FAILED on any exception, with its one-line reason in ``ltexp.error``;
    KILLED on Ctrl-C. The exception is re-raised. ``wrapper`` (from :func:`launched_run_for`)
    is the `mlflow run` run this run did not take, linked to it (:func:`link_wrapper`).
    """
    all_tags = {schema.STEP: step.value, **process_tags(), **(tags or {})}
    is_launched = bool(run_id) and run_id == launched_run_id()
    # MLflow's start_run resumes MLFLOW_RUN_ID whenever no run id is given: a step that does not
    # claim the `mlflow run` run must hide it, and leave it for the step that does
    unclaimed = None if is_launched else os.environ.pop("MLFLOW_RUN_ID", None)
    if is_launched:
        os.environ.pop("MLFLOW_RUN_ID", None)  # claimed, once
    active = mlflow.active_run()
    # MLflow nests under the active run only; a child of another run is re-parented by its tag
    reparent = parent_run_id if active and parent_run_id != active.info.run_id else None
    try:
        run = mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else experiment_id,
            run_name=None if run_id and not is_launched else run_name,
            nested=active is not None,
            parent_run_id=None if reparent else parent_run_id,
            tags=all_tags,
            # plain text: the UI renders a description as Markdown, and names come from users
            description=markdown_text(description) if description else description,
            log_system_metrics=system_metrics or None,
        )
    finally:
        if unclaimed:
            os.environ["MLFLOW_RUN_ID"] = unclaimed
    if reparent and run_id is None:
        mlflow.set_tag(schema.PARENT_RUN, reparent)
    if run_id and not is_launched:  # alive again: a reaped run's reason no longer holds
        with contextlib.suppress(Exception):
            client().delete_tag(run.info.run_id, schema.ERROR)
    _start_heartbeat(run.info.run_id)
    link_wrapper(wrapper, run.info.run_id)
    try:
        yield run
    except KeyboardInterrupt:
        _close(run.info.run_id, RunStatus.KILLED, "interrupted (Ctrl-C)")
        raise
    except RunStopped as e:
        _close(run.info.run_id, RunStatus.KILLED, error_line(e))
        raise
    except BaseException as e:
        _close(run.info.run_id, RunStatus.FAILED, error_line(e))
        raise
    else:
        _close(run.info.run_id, RunStatus.FINISHED, None)
    finally:
        # mlflow.end_run() unsets MLFLOW_RUN_ID: the `mlflow run` run stays for the step that
        # claims it (a tune that first prepares its data, an evaluate after a train)
        if unclaimed:
            os.environ["MLFLOW_RUN_ID"] = unclaimed


def _close(run_id: str, status: int, error: str | None) -> None:
    """End the run with ``status``. On a failure path, problems reaching the server are
    swallowed (the original error is the one to report) and the run still leaves MLflow's
    active-run stack, so no exit handler retries against a server that is gone."""
    if _ASYNC_PENDING:
        with contextlib.suppress(Exception):
            flush()
    _stop_heartbeat(run_id)
    active = mlflow.active_run()
    ours = active is not None and active.info.run_id == run_id
    try:
        if error:
            client().set_tag(run_id, schema.ERROR, error)
    except Exception:  # noqa: BLE001 - reported through the original error
        pass
    try:
        if ours:
            mlflow.end_run(RunStatus.to_string(status))  # pops the stack before contacting
        else:
            client().set_terminated(run_id, RunStatus.to_string(status))
    except Exception:
        if error is None:
            raise


class EpochSender:
    """One background thread that sends each epoch's metrics and heartbeat to the tracking
    store as one ``log_batch`` request, so a training loop never waits on the server.

    MLflow's own asynchronous logging would do the same, but its queue wakes once a second:
    flushing it, and ending any run that used it, waits up to a second each time (up to two
    seconds per train run). Here a flush returns as soon as the queue is empty.
    """

    def __init__(self) -> None:
        self._start(pid=0)

    def _start(self, pid: int) -> None:

        self._queue: queue.Queue = queue.Queue()
        self._errors: list[BaseException] = []
        self._pid = pid
        self._thread = threading.Thread(target=self._send, name="ltexp-epochs", daemon=True)

    def put(self, run_id: str, metrics: dict[str, float], step: int, tags: dict[str, str]) -> None:
        """Queue one request; start the thread on first use (and again in a forked child)."""
        died = self._thread.ident is not None and not self._thread.is_alive()
        if self._pid != os.getpid() or died:
            self._start(pid=os.getpid())
        if self._thread.ident is None:
            self._thread.start()
        # the store of the moment the epoch ended, whatever the process points at later
        uri = mlflow.get_tracking_uri()
        self._queue.put((uri, run_id, metrics, step, tags, int(time.time() * 1000)))

    def _send(self) -> None:

        while True:
            uri, run_id, metrics, step, tags, millis = self._queue.get()
            try:
                MlflowClient(uri).log_batch(
                    run_id,
                    metrics=[Metric(k, float(v), millis, step) for k, v in metrics.items()],
                    tags=[RunTag(k, v) for k, v in tags.items()],
                    synchronous=True,
                )
            except BaseException as e:  # noqa: BLE001 - raised by wait()
                self._errors.append(e)
            finally:
                self._queue.task_done()

    def wait(self, seconds: float) -> bool:
        """Whether everything queued was sent (or failed) within ``seconds``; raises the first
        error a request met."""
        q = self._queue
        end = time.monotonic() + seconds
        with q.all_tasks_done:
            while q.unfinished_tasks:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                q.all_tasks_done.wait(left)
        if self._errors:
            error, self._errors = self._errors[0], []
            raise error
        return True


_SENDER = EpochSender()


def log_epoch(metrics: dict[str, float], epoch: int) -> None:
    """Queue one epoch's metrics (``step=epoch``) and heartbeat; never waits on the server."""
    global _ASYNC_PENDING
    _ASYNC_PENDING = True
    run_id = mlflow.active_run().info.run_id
    _SENDER.put(run_id, _val_acc1_first(metrics), epoch, {schema.HEARTBEAT: f"{time.time():.0f}"})


def _val_acc1_first(metrics: dict[str, float]) -> dict[str, float]:
    """An epoch's metrics, validation accuracy first: the store keeps a run's metrics in the
    order they first came, and the UI's compare page charts the first one its runs share."""
    if schema.VAL_ACC1 not in metrics:
        return metrics
    return {schema.VAL_ACC1: metrics[schema.VAL_ACC1], **metrics}


def flush(deadline: float | None = None) -> None:
    """Deliver metrics queued by :func:`log_epoch`, waiting at most ``deadline`` seconds
    (default :data:`FLUSH_SECONDS`, ``LTEXP_FLUSH_SECONDS``).

    Raises:
        TrackingError: they were not delivered in time (the server counts as gone).
    """
    global _ASYNC_PENDING
    wait = env_seconds("LTEXP_FLUSH_SECONDS", FLUSH_SECONDS) if deadline is None else deadline
    if not _SENDER.wait(wait):  # raises the error a request met
        give_up_on_server()
        with contextlib.suppress(Exception):
            _SENDER.wait(60)  # what is left fails fast now
        raise TrackingError(f"the tracking server {safe_uri()} did not take the queued metrics")
    _ASYNC_PENDING = False


def log_params(params: dict[str, Any]) -> None:
    """Log params on the active run, keeping values that are already there.

    ``mlflow run`` logs the ``-P`` values itself, as typed (``lr=1e-3``); MLflow params cannot
    change, so a value already logged stays when it means the same as ours, and anything else
    is an error.
    """
    run = mlflow.active_run()
    existing = client().get_run(run.info.run_id).data.params if run else {}
    fresh = {}
    for key, value in params.items():
        text = _param_text(value)
        if key not in existing:
            fresh[key] = text
        elif existing[key] != text and not _same_value(existing[key], text, key):
            raise TrackingError(
                f"param {key} is already {existing[key]!r} on this run; it cannot become {text!r}"
            )
    if fresh:
        mlflow.log_params(fresh)


def _param_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _same_value(a: str, b: str, key: str = "") -> bool:
    """Whether two param texts mean the same value (``-P deterministic=yes`` is ``True``,
    ``-P betas=.9,.999`` is ``0.9,0.999``): through the config field's own converter."""
    spec = all_fields().get(key)
    if spec is not None:
        with contextlib.suppress(ConfigError):
            return convert(spec, a) == convert(spec, b)
    try:
        return float(a) == float(b)
    except ValueError:
        return a.strip().lower() == b.strip().lower()


def log_once(metrics: dict[str, float]) -> None:
    """Log summary metrics on the active run unless a run resumed after a crash already did."""
    run_id = mlflow.active_run().info.run_id
    logged = client().get_run(run_id).data.metrics
    fresh = {k: v for k, v in metrics.items() if logged.get(k) != v}
    if fresh:
        mlflow.log_metrics(fresh)


def deliver_history(run_id: str, history: list[dict[str, float]]) -> None:
    """Log the epochs of ``history`` (rows with ``epoch``) that never reached the server."""
    logged = {m.step for m in client().get_metric_history(run_id, schema.VAL_ACC1)}
    for row in history:
        if row["epoch"] not in logged:
            metrics = {k: v for k, v in row.items() if k != "epoch"}
            mlflow.log_metrics(_val_acc1_first(metrics), step=int(row["epoch"]))


def ensure_delivered(run_id: str, history: list[dict[str, float]], kept_in: str) -> None:
    """Every epoch's metrics are on the server, or the run fails saying so: never dropped.

    Args:
        kept_in: where the history is kept for the re-run (named in the error).

    Raises:
        TrackingError: the server cannot be reached.
    """
    try:
        flush()
    except Exception as e:  # noqa: BLE001 - whatever failed, the checkpoint has the values
        log.warning(
            "metrics queued during the run were not delivered (%s); sending them "
            "again from the checkpoint",
            redact(error_line(e))[:200],
        )
    try:
        deliver_history(run_id, history)
    except mlflow.exceptions.MlflowException as e:
        give_up_on_server()
        raise TrackingError(
            f"the tracking server {safe_uri()} is unreachable, "
            f"so some epochs' metrics are not delivered; they are kept in "
            f"{kept_in!r} and sent when the same command is run again "
            f"({redact(error_line(e))[:160]})"
        ) from None
