"""Checkpoints in the Model Registry: log, register, pick the champion, load back safely.

Each version is an MLflow ``pytorch`` model holding a TorchScript program
(``torch.jit.script``), named after its cell (``resnet50-ldam-lt-s42``), with the cell's params,
and two extra files: ``extra_files/weights.safetensors`` (the best-validation weights) and
``extra_files/ltexp_model.json`` (architecture, classes, head, input size, normalisation); its
pyfunc loader is ``code/ltexp_classifier.py`` (:mod:`ltexp.tracking.ltexp_classifier`), which
answers logits, or on request probabilities and class names.

Why TorchScript and not ``pt2`` (``torch.export``): what ``mlflow.pytorch.load_model`` returns
for a pt2 model refuses ``.eval()``, ``.train()`` and moving to another device, and every
PyTorch user calls ``.eval()`` after loading. A scripted module is a real module: ``.eval()``,
``.train()`` (batch norm and dropout switch for real), ``.to(device)``, pyfunc and ``mlflow
models serve`` all work. Loading it reads a TorchScript archive (TorchScript's own reader of
tensors and TorchScript code), not pickled Python. MLflow counts every non-pt2 PyTorch model as
"pickle", so with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` its loader refuses them all;
:func:`load_model` is the load that refuses any pickle whatever MLflow's setting: it rebuilds the
module from ltexp's code and the safetensors weights (tensors only), and refuses a version that
lacks them. ltexp itself only ever loads that way.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import Model, ModelSignature
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec
from torch import nn

from ltexp import schema
from ltexp.checkpoint import load_weights, save_weights
from ltexp.data.sources import MAX_CLASS_NAME
from ltexp.errors import ConfigError, TrackingError, TrainingError
from ltexp.models import HEADS, build_model, model_spec
from ltexp.models.ensemble import COMBINES, ENSEMBLE, Ensemble
from ltexp.tracking import ltexp_classifier, runs
from ltexp.tracking.queries import ltexp_models, versions_of

log = logging.getLogger(__name__)
WEIGHTS_FILE = "weights.safetensors"
OUTPUT_DOC = (
    "logits, one per class (N x num_classes); softmax over a row gives the probabilities, its "
    "argmax the index of the predicted class in class_names. pyfunc and mlflow models serve "
    "also answer params {'output': 'probabilities'} (a column per class name) and "
    "{'output': 'classes'} (class_index, class_name, probability)"
)
MODEL_INFO_FILE = "ltexp_model.json"
EXTRA_FILES_DIR = "extra_files"


@dataclass(frozen=True)
class ModelInfo:
    """What it takes to rebuild a registered classifier from its weights."""

    model: str
    num_classes: int
    head: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # output i of the model is class_names[i] (empty: a version registered before they were kept)
    class_names: tuple[str, ...] = ()
    # an ensemble (model "ensemble"): its members' own descriptions and how it combines them
    members: tuple[ModelInfo, ...] = ()
    combine: str = ""


def build_classifier(info: ModelInfo) -> nn.Module:
    """The untrained module a version's weights load into: the backbone, or an ensemble of
    its members' backbones."""
    if info.members:
        members = [build_classifier(m) for m in info.members]
        stats = [(m.mean, m.std) for m in info.members]
        return Ensemble(members, info.combine, stats)
    return build_model(info.model, info.num_classes, pretrained=False, head=info.head)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """MLflow warns that a non-pt2 model is "pickle" (see the module docstring) and that a
    tensor example cannot be checked as a JSON serving payload; torch warns that TorchScript is
    deprecated. None is a problem of the model being logged."""
    loggers = [logging.getLogger(n) for n in ("mlflow.pytorch", "mlflow.models.model")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def log_and_register(
    model: nn.Module,
    info: ModelInfo,
    registered_name: str,
    version_tags: dict[str, str],
    *,
    logged_name: str,
    params: dict[str, Any] | None = None,
) -> str:
    """Log ``model`` (CPU copy, eval mode) to the active run and register a new version.

    Args:
        logged_name: the logged model's name in the UI (the cell: ``resnet50-ldam-lt-s42``).
        params: shown beside the model in the experiment's Models view (the cell's params).

    Returns:
        ``models:/<name>/<version>``.
    """
    # the loader's own checks, before anything is logged: never a version it would refuse
    description = json.loads(json.dumps(asdict(info)))
    _model_info(
        description,
        lambda why: TrackingError(f"cannot register {registered_name!r}: {why}"),
        nested=False,
    )
    cpu_model = _unwrap(model).to("cpu").eval()
    with tempfile.TemporaryDirectory() as tmp, _quiet_logging():
        files = _model_files(cpu_model, info, Path(tmp))
        runs.log_params(dict(zip(schema.MODEL_DIGEST_PARAMS, files.digests, strict=True)))
        logged = Model.log(
            artifact_path=None,
            name=logged_name,
            flavor=_ClassifierFlavor,
            flavor_name="mlflow.pytorch",
            metadata=files.metadata,
            params={k: str(v) for k, v in (params or {}).items()},
            **files.flavor_kwargs,
        )
        # registered here rather than by log_model: the version is created with its tags in
        # one request instead of one request per tag. MLflow prints two lines per registration
        # to stderr; they are kept for -v (the cell's own line says what was registered)
        with contextlib.redirect_stderr(io.StringIO()) as said:
            version = mlflow.register_model(
                f"models:/{logged.model_id}",
                registered_name,
                tags={**version_tags, **input_tags(info)},
            ).version
        for line in said.getvalue().splitlines():
            log.info("%s", line)
    c = runs.client()
    run = mlflow.active_run()
    c.update_model_version(
        registered_name, version, description=model_card(info, version_tags, run.info)
    )
    if not c.get_registered_model(registered_name).description:
        c.update_registered_model(registered_name, description=family_card(info, params or {}))
    return f"models:/{registered_name}/{version}"


def input_tags(info: ModelInfo) -> dict[str, str]:
    """What a program needs to feed a version, as its tags (the card says it in words)."""
    side = info.image_size
    return {
        schema.VersionTag.INPUT_SHAPE: f"-1,3,{side},{side}",
        schema.VersionTag.INPUT_MEAN: ",".join(f"{v:g}" for v in info.mean),
        schema.VersionTag.INPUT_STD: ",".join(f"{v:g}" for v in info.std),
    }


def model_card(info: ModelInfo, version_tags: dict[str, str], run: Any) -> str:
    """A version's description (Markdown, as the UI shows it): the cell, the input contract,
    the answer, the validation top-1; the test top-1 is added by its evaluation
    (:func:`add_test_results`)."""
    side = info.image_size
    mean = ", ".join(f"{v:g}" for v in info.mean)
    std = ", ".join(f"{v:g}" for v in info.std)
    link = runs.ui_link(run.experiment_id, run.run_id)
    cell = version_tags.get(schema.VersionTag.CELL, "")
    lines = [
        f"**{info.model}**, {info.num_classes} classes, trained in run [{run.run_id}]({link})"
        + (f" (cell `{cell}`)" if cell else "")
        + ".",
        f"**Input**: float32 `(N, 3, {side}, {side})`: RGB images resized to {side}×{side}, "
        f"scaled to [0, 1], then normalised per channel: `(x − mean) / std` with mean "
        f"({mean}) and std ({std}); normalised values are a few units, and a value beyond "
        f"±10,000 or not finite is refused.",
        "**Output**: `(N, K)` logits; `params={'output': 'probabilities'}` or `'classes'` for "
        "named answers (`mlflow.models.get_model_info(uri).metadata['class_names']`).",
    ]
    val = version_tags.get(schema.VersionTag.VAL_ACC1)
    if val:
        lines.append(f"**Validation top-1** (what chooses the champion): {float(val):.4f}.")
    return "\n\n".join(lines)


def family_card(info: ModelInfo, params: dict[str, Any]) -> str:
    """A registered model's description: what its versions are."""
    what = ", ".join(f"{k} {v}" for k, v in params.items() if k in ("model", "loss", "train_split"))
    return (
        f"ltexp classifiers of {params.get('dataset', 'a dataset')} ({what or info.model}): one "
        f"version per trained seed or variant of the cell; `@champion` is the version of the best "
        f"validation top-1. Each version's description states its input, its answer and its test "
        f"results."
    )


def add_test_results(model_uri: str, metrics: dict[str, float], run: Any) -> None:
    """Add an evaluation's test top-1 (with their intervals) to the tested version's card, and
    as its tag ``test_top1`` (JSON, for programs)."""
    if not model_uri.startswith("models:/"):
        return
    resolved, _ = resolve_model_uri(model_uri)
    name, _, version = resolved.removeprefix("models:/").rpartition("/")
    results = {}
    for column, metric in schema.REPORT_COLUMNS.items():
        if metric in metrics:
            results[column] = [
                round(metrics[metric], 6),
                round(metrics.get(f"{metric}_ci_low", float("nan")), 6),
                round(metrics.get(f"{metric}_ci_high", float("nan")), 6),
            ]
    if not results:
        return
    c = runs.client()
    shown = "; ".join(
        f"{k.replace('_', '-')} {v:.4f} [{lo:.4f}, {hi:.4f}]" for k, (v, lo, hi) in results.items()
    )
    link = runs.ui_link(run.experiment_id, run.run_id)
    text = (
        f"**Test top-1** (evaluate run [{run.run_id}]({link}), 95 % Clopper-Pearson intervals "
        f"over the test images): {shown}."
    )
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        mv = c.get_model_version(name, version)
        if text not in (mv.description or ""):
            described = f"{mv.description}\n\n{text}" if mv.description else text
            c.update_model_version(name, version, description=described)
        c.set_model_version_tag(name, version, schema.VersionTag.TEST_TOP1, json.dumps(results))


@dataclass
class _ModelFiles:
    """What an MLflow model of a classifier is made of (:func:`_model_files`)."""

    flavor_kwargs: dict[str, Any]
    metadata: dict[str, Any]
    digests: tuple[str, str]  # sha256 of the weights and of the description


def _model_files(cpu_model: nn.Module, info: ModelInfo, tmp: Path) -> _ModelFiles:
    """The flavor's arguments of ``cpu_model``: the TorchScript program, the safetensors
    weights and the description as extra files (written into ``tmp``), the signature, an input
    example, the pyfunc loader's code and the pinned requirements; the metadata a client reads
    (class names); the digests of the weights and the description."""
    side = info.image_size
    # one image: MLflow stores the example twice as JSON text (about 20 bytes a value, 3 MB at
    # 224 px), which a batch of two doubled (a third of a MobileNetV2 version)
    example = torch.zeros(1, 3, side, side)
    with torch.no_grad():
        out_dim = cpu_model(example).shape[1]
    # unnamed tensors: pyfunc and the serving endpoint take a plain (N, 3, S, S) array; the
    # outputs schema is the default answer's (logits)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, side, side))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, out_dim))]),
        params=ParamSchema(
            [ParamSpec(ltexp_classifier.OUTPUT_PARAM, "string", ltexp_classifier.OUTPUTS[0])]
        ),
    )
    weights = tmp / WEIGHTS_FILE
    save_weights(cpu_model.state_dict(), weights)
    meta = tmp / MODEL_INFO_FILE
    meta.write_text(json.dumps(asdict(info), indent=2))
    return _ModelFiles(
        {
            "pytorch_model": torch.jit.script(cpu_model),
            "code_paths": [ltexp_classifier.__file__],
            "serialization_format": "pickle",  # MLflow's name for every non-pt2 format
            "input_example": example.numpy(),
            "signature": signature,
            "extra_files": [str(weights), str(meta)],
            "pip_requirements": model_requirements(),
        },
        # what a client of the model (or of `mlflow models serve`) needs besides the logits:
        # mlflow.models.get_model_info(uri).metadata
        {
            ltexp_classifier.CLASS_NAMES_KEY: list(info.class_names)
            or [str(c) for c in range(out_dim)],
            "output": OUTPUT_DOC,
        },
        (_sha256(weights), _sha256(meta)),
    )


def save_served_model(model_uri: str, folder: Path) -> ModelInfo:
    """Save a registered version as an MLflow model in ``folder``, rebuilt from its
    safetensors weights and ltexp's code after the checks of :func:`load_classifier` (the
    digests its run recorded): the TorchScript program stored in the registry is never read,
    so serving ``folder`` runs only ltexp's code (``ltexp serve``)."""
    version, _ = resolve_model_uri(model_uri)  # an alias moved meanwhile: this version still
    model, info = load_classifier(version, "cpu")
    with tempfile.TemporaryDirectory() as tmp, _quiet_logging():
        files = _model_files(model, info, Path(tmp))
        _ClassifierFlavor.save_model(
            str(folder), mlflow_model=Model(metadata=files.metadata), **files.flavor_kwargs
        )
    return info


class _ClassifierFlavor:
    """MLflow's PyTorch flavor whose pyfunc loader is :mod:`ltexp.tracking.ltexp_classifier`
    (shipped in the model's ``code/``): ``mlflow.pytorch.load_model`` is unchanged, and pyfunc
    and ``mlflow models serve`` can also answer probabilities or class names."""

    @staticmethod
    def save_model(path: str, mlflow_model: Model, **kwargs: Any) -> None:
        mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        pyfunc_conf = mlflow_model.flavors[mlflow.pyfunc.FLAVOR_NAME]
        pyfunc_conf[mlflow.pyfunc.MAIN] = ltexp_classifier.__name__.rsplit(".", 1)[-1]
        mlflow_model.save(str(Path(path) / "MLmodel"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_requirements() -> list[str]:
    """The pip requirements a registered version lists: this torch and this MLflow, pinned."""
    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile


def register_best(
    weights: Path,
    info: ModelInfo,
    registered_name: str,
    version_tags: dict[str, str],
    *,
    logged_name: str,
    params: dict[str, Any],
) -> str:
    """Register the best checkpoint of the active run, once: a resumed run that registered
    before its process died reuses that version. Sets the run's ``ltexp.model_uri`` tag and
    moves the champion; returns ``models:/<name>/<version>``."""
    run_id = mlflow.active_run().info.run_id
    uri = version_of_run(registered_name, run_id)
    if uri is None:
        model = build_model(info.model, info.num_classes, pretrained=False, head=info.head)
        model.load_state_dict(load_weights(weights))
        uri = log_and_register(
            model, info, registered_name, version_tags, logged_name=logged_name, params=params
        )
    mlflow.set_tag(schema.MODEL_URI, uri)
    update_champion(registered_name, version_tags.get(schema.VersionTag.CELL))
    return uri


def drop_orphan_versions(registered_name: str, config_hash: str) -> list[str]:
    """Delete the versions of ``registered_name`` with this identity (``config_hash`` tag)
    whose run did not finish: a process killed while MLflow created the version row leaves a
    READY version of a FAILED run, and the same command registers the identity again; now
    once. Returns the versions deleted."""
    c = runs.client()
    active = mlflow.active_run()
    mine = active.info.run_id if active else None
    dropped = []
    for mv in c.search_model_versions(versions_of(registered_name)):
        if mv.tags.get(schema.VersionTag.CONFIG_HASH) != config_hash or mv.run_id == mine:
            continue
        try:
            status = c.get_run(mv.run_id).info.status if mv.run_id else ""
        except mlflow.exceptions.MlflowException:
            status = ""
        if status != "FINISHED":
            c.delete_model_version(registered_name, mv.version)
            dropped.append(mv.version)
    return dropped


def version_of_run(registered_name: str, run_id: str) -> str | None:
    """``models:/<name>/<version>`` registered from ``run_id``, if any."""
    c = runs.client()
    try:
        versions = c.search_model_versions(versions_of(registered_name, run_id))
    except mlflow.exceptions.MlflowException:
        return None
    if not versions:
        return None
    return f"models:/{registered_name}/{min(int(v.version) for v in versions)}"


def update_champion(registered_name: str, cell: str | None = None) -> str:
    """Point ``champion`` at the best ``val_acc1`` version of one cell; return it.

    Only versions of the same cell (version tag ``cell``: the same options but the seed) are
    compared: ``cell`` (default: the newest version's). When the champion is a version of
    another cell (the name's cell was trained with other settings before: other epochs, another
    learning rate), it moves to this cell's best, and a warning says so. Within a cell the
    alias moves only to a strictly better version: on a tie the current champion stays.

    Several processes may register versions of one name at once: after moving the alias, the
    versions are read again until the alias is on the best one (a process that registered later
    may have moved it meanwhile), and an alias that another process wrote at the same moment is
    not an error but a reason to look again.
    """
    c = runs.client()
    for attempt in range(CHAMPION_ATTEMPTS):
        chosen, current = _champion_choice(c, registered_name, cell)
        cell = cell or chosen.tags.get(schema.VersionTag.CELL, "")
        if current is not None and current.version == chosen.version:
            return str(chosen.version)
        if current is not None and current.tags.get(schema.VersionTag.CELL, "") != cell:
            log.warning(
                "%s@%s moves from version %s to version %s: they were trained with different "
                "settings (cell %s, then %s); versions of one cell only are compared",
                registered_name,
                schema.CHAMPION_ALIAS,
                current.version,
                chosen.version,
                current.tags.get(schema.VersionTag.CELL, "") or "unrecorded",
                cell,
            )
        try:
            c.set_registered_model_alias(
                registered_name, schema.CHAMPION_ALIAS, str(chosen.version)
            )
        except mlflow.exceptions.MlflowException:
            if attempt == CHAMPION_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))  # another process wrote the alias at this moment
    return str(chosen.version)


CHAMPION_ATTEMPTS = 5  # reads of the versions before the last alias write stands


def _champion_choice(c: Any, registered_name: str, cell: str | None) -> tuple[Any, Any]:
    """(the version that should be champion, the current champion or None)."""
    versions = c.search_model_versions(versions_of(registered_name))
    if not versions:
        raise TrackingError(f"registered model {registered_name!r} has no versions")

    def score(v: Any) -> float:
        try:
            return float(v.tags.get(schema.VersionTag.VAL_ACC1, "-1"))
        except ValueError:
            return -1.0

    def cell_of(v: Any) -> str:
        return v.tags.get(schema.VersionTag.CELL, "")

    if cell is None:
        cell = cell_of(max(versions, key=lambda v: int(v.version)))
    same = [v for v in versions if cell_of(v) == cell]
    best = max(same, key=lambda v: (score(v), -int(v.version)))  # first of the best
    current = next((v for v in versions if schema.CHAMPION_ALIAS in (v.aliases or [])), None)
    if current is not None and cell_of(current) == cell and score(current) >= score(best):
        return current, current  # on a tie the champion stays
    return best, current


def ltexp_model_names() -> str:
    """A few registered ltexp model names, for error messages (``none`` when there are none)."""
    try:
        found = runs.client().search_registered_models(ltexp_models(), max_results=8)
    except mlflow.exceptions.MlflowException:
        return "none"
    names = [m.name for m in found]
    return ", ".join(names) + (", …" if len(names) == 8 else "") if names else "none"


def resolve_model_uri(model_uri: str) -> tuple[str, str]:
    """``(models:/<name>/<version>, source run id)`` of a ``models:/`` or ``runs:/`` URI.

    Raises:
        TrackingError: one line naming the URI and what exists instead.
    """
    c = runs.client()
    where = mlflow.get_tracking_uri()
    if model_uri.startswith("runs:/"):
        run_id = model_uri.removeprefix("runs:/").split("/")[0]
        runs.get_run(run_id)
        return model_uri, run_id
    if not model_uri.startswith("models:/"):
        raise TrackingError(
            f"model_uri {model_uri!r} must be models:/<name>/<version>, models:/<name>@<alias> "
            f"or runs:/<run id>/<model name>"
        )
    body = model_uri.removeprefix("models:/")
    name, sep, ref = body.partition("@") if "@" in body else body.rpartition("/")
    if not name or not ref or (sep == "/" and not ref.isdigit()):
        raise TrackingError(
            f"model_uri {model_uri!r} must be models:/<name>/<version> or models:/<name>@<alias>"
        )
    try:
        model = c.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        raise TrackingError(
            f"model_uri {model_uri!r}: no registered model {name!r} on {where}; "
            f"registered ltexp models: {ltexp_model_names()}"
        ) from None
    versions = sorted(int(v.version) for v in c.search_model_versions(versions_of(name)))
    try:
        mv = (
            c.get_model_version_by_alias(name, ref)
            if sep == "@"
            else c.get_model_version(name, ref)
        )
    except mlflow.exceptions.MlflowException:
        what = f"alias {ref!r}" if sep == "@" else f"version {ref}"
        aliases = ", ".join(sorted(model.aliases)) if model.aliases else "none"
        raise TrackingError(
            f"model_uri {model_uri!r}: {name!r} has no {what}; its versions: "
            f"{', '.join(map(str, versions)) or 'none'}; its aliases: {aliases}"
        ) from None
    return f"models:/{mv.name}/{mv.version}", mv.run_id


def model_run(
    run_id: str | None, model_uri: str, steps: tuple[schema.Step, ...]
) -> tuple[mlflow.entities.Run, str]:
    """The run that registered a model (of one of ``steps``) and its ``models:/`` version URI,
    from the run id or else from a ``models:/``/``runs:/`` URI.

    Raises:
        ConfigError: neither given.
        TrackingError: the run or version does not exist, is not ltexp's, or registered nothing.
    """
    what = " or ".join(s.value for s in steps)
    if model_uri and not run_id:
        uri, source_run = resolve_model_uri(model_uri)
        if not source_run:  # registered by another tool from a path, or its run was deleted
            raise TrackingError(
                f"model_uri {model_uri!r} has no run that registered it, so its data and "
                f"classes are unknown to ltexp; registered ltexp models: {ltexp_model_names()}"
            )
        try:
            run = runs.get_run(source_run)
        except TrackingError:
            run = None
        step = run.data.tags.get(schema.STEP) if run else None
        if run and step in {s.value for s in steps}:
            return run, uri
        if step:
            article = "an" if step[0] in "aeiou" else "a"
            raise TrackingError(
                f"model_uri {model_uri!r} is the model of {article} {step} run; this needs the "
                f"model of a {what} run"
            )
        raise TrackingError(
            f"model_uri {model_uri!r} was not registered by ltexp (its run is not an ltexp "
            f"{what} run, so its data and classes are unknown); registered ltexp models: "
            f"{ltexp_model_names()}"
        )
    if not run_id:
        raise ConfigError("give train_run=<train run id> or model_uri=models:/...")
    run = runs.get_run(run_id, steps)
    uri = run.data.tags.get(schema.MODEL_URI)
    if not uri:
        raise TrackingError(
            f"{run.data.tags.get(schema.STEP)} run {run_id} ({run.info.status}) has no "
            f"registered checkpoint yet; finish or resume it first"
        )
    return run, uri


def logged_model_id(model_uri: str) -> str | None:
    """The MLflow logged-model id behind ``models:/<name>/<version>`` (None if unknown)."""
    if not model_uri.startswith("models:/"):
        return None
    name, _, version = model_uri.removeprefix("models:/").rpartition("/")
    try:
        mv = runs.client().get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        return None
    # some stores leave model_id empty; the version's source is then models:/<model id>
    source = mv.source or ""
    return mv.model_id or (
        source.removeprefix("models:/") if source.startswith("models:/m-") else None
    )


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a progress bar per download, even when stderr is no terminal; a caller
    who asked for it (the variable set) keeps it."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def load_classifier(model_uri: str, device: torch.device | str) -> tuple[nn.Module, ModelInfo]:
    """Rebuild a registered ltexp classifier on ``device`` from its code and safetensors
    weights, in eval mode. Nothing but tensors and JSON is read: no pickle, no TorchScript.

    Raises:
        TrackingError: the version cannot be downloaded, or lacks ltexp's files (a model that
            ltexp did not register, or a tampered one) — it is refused, never loaded.
    """
    digests = _registered_digests(model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with _no_progress_bar():
                local = Path(
                    mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
                )
        except Exception as e:  # noqa: BLE001
            raise TrackingError(
                f"cannot download model {model_uri!r} ({runs.error_line(e)[:160]})"
            ) from None
        info_path = local / EXTRA_FILES_DIR / MODEL_INFO_FILE
        weights_path = local / EXTRA_FILES_DIR / WEIGHTS_FILE
        if not (info_path.is_file() and weights_path.is_file()):
            raise TrackingError(
                f"model {model_uri!r} lacks {EXTRA_FILES_DIR}/{MODEL_INFO_FILE} and "
                f"{EXTRA_FILES_DIR}/{WEIGHTS_FILE}: it was not registered by ltexp and is "
                f"refused (ltexp loads safetensors weights only, never a pickled model)"
            )
        for path, param in zip((weights_path, info_path), schema.MODEL_DIGEST_PARAMS, strict=True):
            if digests and _sha256(path) != digests.get(param):
                raise TrackingError(
                    f"model {model_uri!r}: its {path.name} is not the file its run registered "
                    f"(sha256 differs from the run's {param}); it is refused"
                )
        info = read_model_info(info_path, model_uri)
        model = build_classifier(info)
        try:
            model.load_state_dict(load_weights(weights_path))
        except (RuntimeError, TrainingError) as e:
            raise TrackingError(
                f"model {model_uri!r}: its weights do not fit {info.model} "
                f"({str(e).splitlines()[0][:120]})"
            ) from None
    broken = next((n for n, t in model.state_dict().items() if not t.isfinite().all()), None)
    if broken is not None:  # a model of NaNs would be evaluated as chance accuracy
        raise TrackingError(
            f"model {model_uri!r} has non-finite weights (NaN or inf in {broken}); it cannot be "
            f"evaluated or served"
        )
    return model.to(device).eval(), info


MAX_MODEL_INFO_BYTES = 1_048_576  # an ltexp_model.json: a few hundred bytes and the classes


MAX_MEMBERS = 64  # an ensemble of more is not a description any study writes


def read_model_info(path: Path, model_uri: str) -> ModelInfo:
    """A version's ``ltexp_model.json``, checked field by field before anything is built.

    Raises:
        TrackingError: not JSON, nested or large beyond a model description, or a field of the
            wrong type or outside its range (``num_classes`` 1e12, "10" or 10.7).
    """

    def refuse(why: str) -> TrackingError:
        return TrackingError(f"model {model_uri!r} has a corrupt {MODEL_INFO_FILE}: {why}")

    if path.stat().st_size > MAX_MODEL_INFO_BYTES:
        raise refuse(f"{path.stat().st_size:,} bytes, more than a model description holds")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        raise refuse("not JSON") from None
    return _model_info(raw, refuse, nested=False)


def _model_info(raw: Any, refuse: Any, *, nested: bool) -> ModelInfo:
    """One description checked (an ensemble's members each in turn, one level deep)."""
    fields = set(ModelInfo.__dataclass_fields__)
    optional = {"class_names", "members", "combine"}
    if not isinstance(raw, dict) or not fields - optional <= set(raw) <= fields:
        raise refuse(f"it needs exactly the fields {', '.join(ModelInfo.__dataclass_fields__)}")

    def integer(name: str, low: int, high: int) -> int:
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise refuse(f"{name} must be an integer in [{low}, {high:,}], got {value!r:.40}")
        return value

    def triple(name: str) -> tuple[float, float, float]:
        value = raw[name]
        ok = isinstance(value, list) and len(value) == 3
        if not ok or not all(isinstance(v, int | float) and math.isfinite(v) for v in value):
            raise refuse(f"{name} must be three finite numbers")
        return tuple(float(v) for v in value)  # type: ignore[return-value]

    if not isinstance(raw["model"], str) or not isinstance(raw["head"], str):
        raise refuse("model and head must be names")
    ensemble = raw["model"] == ENSEMBLE
    if ensemble and nested:
        raise refuse("an ensemble's member cannot be an ensemble")
    if not ensemble:
        try:
            model_spec(raw["model"])
        except ConfigError:
            raise refuse(f"unknown model {raw['model']!r:.40}") from None
    if raw["head"] not in HEADS:
        raise refuse(f"head must be one of {', '.join(HEADS)}")
    num_classes = integer("num_classes", 2, 1_000_000)
    names = raw.get("class_names", [])
    if not isinstance(names, list) or (names and len(names) != num_classes):
        raise refuse(f"class_names must be a list of {num_classes} names")
    if not all(isinstance(n, str) and len(n) <= MAX_CLASS_NAME for n in names):
        raise refuse(f"class_names must be names of at most {MAX_CLASS_NAME} characters")
    members: tuple[ModelInfo, ...] = ()
    combine = raw.get("combine", "")
    if ensemble:
        listed = raw.get("members")
        if not isinstance(listed, list) or not 2 <= len(listed) <= MAX_MEMBERS:
            raise refuse(f"an ensemble needs a list of 2 to {MAX_MEMBERS} members")
        members = tuple(_model_info(m, refuse, nested=True) for m in listed)
        if combine not in COMBINES:
            raise refuse(f"combine must be one of {', '.join(COMBINES)}")
        if any(m.num_classes != num_classes for m in members):
            raise refuse("an ensemble's members must all have its num_classes")
    elif raw.get("members") or combine:
        raise refuse("members and combine belong to an ensemble only")
    return ModelInfo(
        raw["model"],
        num_classes,
        raw["head"],
        integer("image_size", 8, 4096),
        triple("mean"),
        triple("std"),
        tuple(names),
        members,
        combine,
    )


def _registered_digests(model_uri: str) -> dict[str, str]:
    """The digests a version's run recorded of its files (empty for a version registered
    before they were recorded). A version with no run, or whose files are not kept under its
    run, is refused before anything is downloaded (its source could name any folder)."""
    if not model_uri.startswith("models:/"):
        return {}
    name, _, version = model_uri.removeprefix("models:/").rpartition("/")
    c = runs.client()
    try:
        mv = c.get_model_version(name, version)
        run = c.get_run(mv.run_id) if mv.run_id else None
    except mlflow.exceptions.MlflowException:
        run = None
    if run is None:
        raise TrackingError(
            f"model {model_uri!r} has no run that registered it: it was not registered by ltexp "
            f"and is refused"
        )
    source = mv.source or ""
    inside = source.startswith("models:/m-") or source.startswith(
        run.info.artifact_uri.rstrip("/") + "/"
    )
    if not inside:
        raise TrackingError(
            f"model {model_uri!r} keeps its files at {source[:80]!r}, outside its run's "
            f"artifacts: it was not registered by ltexp and is refused"
        )
    return {k: run.data.params[k] for k in schema.MODEL_DIGEST_PARAMS if k in run.data.params}


def load_model(model_uri: str, device: torch.device | str = "cpu") -> nn.Module:
    """A registered ltexp version as a plain, trainable ``torch.nn.Module`` (eval mode).

    ``ltexp.load_model("models:/ltexp-cifar100-vit_b16-ldam-lt@champion")``: rebuilt from
    ltexp's code and the version's safetensors weights, so no pickle is executed whatever
    ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` says; call ``.train()`` to fine-tune it further.
    Inputs are normalised ``(N, 3, S, S)`` float images (see the version's ``ltexp_model.json``).
    """
    model, _ = load_classifier(resolve_model_uri(model_uri)[0], device)
    return model
