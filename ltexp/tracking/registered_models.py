"""Checkpoints in the Model Registry: log, register, pick the champion, load back safely.

Serialization format: the MLflow ``pytorch`` flavour with ``serialization_format="pt2"``
(``torch.export``): a traced graph plus tensors. Loading it runs no pickled Python, which matters
because the registry is shared by a team: anyone who can write a model version could otherwise
run code on every machine that loads it (MLflow 3 refuses pickled models by default for the same
reason). ``mlflow.pytorch.load_model("models:/<name>@champion")`` works in a fresh process with
only ltexp's dependencies, on the CPU, and returns a module giving logits ``[B, K]`` for
normalised images ``[B, 3, S, S]``.

Beside the graph, each version carries ``extra_files/weights.safetensors`` (the best-validation
weights) and ``extra_files/ltexp_model.json`` (architecture, classes, head, input size,
normalisation). ltexp's own evaluate step rebuilds the model from those two files: an exported
graph is fixed to the device it was traced on, the weights are not.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from torch import nn

from ltexp.checkpoint import load_weights, save_weights
from ltexp.errors import TrackingError
from ltexp.tracking import runs, schema

WEIGHTS_FILE = "weights.safetensors"
MODEL_INFO_FILE = "ltexp_model.json"


@dataclass(frozen=True)
class ModelInfo:
    """What it takes to rebuild a registered classifier from its weights."""

    model: str
    num_classes: int
    head: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def log_and_register(
    model: nn.Module, info: ModelInfo, registered_name: str, version_tags: dict[str, str]
) -> str:
    """Log ``model`` (CPU copy, eval mode) to the active run and register a new version.

    Returns:
        ``models:/<name>/<version>``.
    """
    cpu_model = _unwrap(model).to("cpu").eval()
    example = torch.zeros(2, 3, info.image_size, info.image_size)
    with torch.no_grad():
        out_dim = cpu_model(example).shape[1]
    signature = ModelSignature(
        inputs=Schema(
            [TensorSpec(np.dtype(np.float32), (-1, 3, info.image_size, info.image_size), "images")]
        ),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, out_dim), "logits")]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / WEIGHTS_FILE
        save_weights(cpu_model.state_dict(), weights)
        meta = Path(tmp) / MODEL_INFO_FILE
        meta.write_text(json.dumps(asdict(info), indent=2))
        # MLflow tries to validate a JSON serving example, which pt2 tensor models cannot take,
        # and warns about it on every log: not a problem of the model
        logging.getLogger("mlflow.models.model").setLevel(logging.ERROR)
        logged = mlflow.pytorch.log_model(
            cpu_model,
            name=schema.MODEL_ARTIFACT,
            serialization_format="pt2",
            input_example=example.numpy(),
            signature=signature,
            registered_model_name=registered_name,
            extra_files=[str(weights), str(meta)],
            pip_requirements=_requirements(),
        )
    version = logged.registered_model_version
    c = runs.client()
    for key, value in version_tags.items():
        c.set_model_version_tag(registered_name, str(version), key, value)
    return f"models:/{registered_name}/{version}"


def _requirements() -> list[str]:
    import torch as _torch

    return [f"torch=={_torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile


def register_best(
    weights: Path, info: ModelInfo, registered_name: str, version_tags: dict[str, str]
) -> str:
    """Register the best checkpoint of the active run, once: a resumed run that registered
    before its process died reuses that version. Sets the run's ``ltexp.model_uri`` tag and
    moves the champion; returns ``models:/<name>/<version>``."""
    from ltexp.models import build_model

    run_id = mlflow.active_run().info.run_id
    uri = version_of_run(registered_name, run_id)
    if uri is None:
        model = build_model(info.model, info.num_classes, pretrained=False, head=info.head)
        model.load_state_dict(load_weights(weights))
        uri = log_and_register(model, info, registered_name, version_tags)
    mlflow.set_tag(schema.MODEL_URI, uri)
    update_champion(registered_name)
    return uri


def version_of_run(registered_name: str, run_id: str) -> str | None:
    """``models:/<name>/<version>`` registered from ``run_id``, if any."""
    c = runs.client()
    try:
        versions = c.search_model_versions(f"name = '{registered_name}' and run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException:
        return None
    if not versions:
        return None
    return f"models:/{registered_name}/{min(int(v.version) for v in versions)}"


def update_champion(registered_name: str) -> str:
    """Point the ``champion`` alias at the version with the best ``val_acc1`` tag; return it."""
    c = runs.client()
    versions = c.search_model_versions(f"name = '{registered_name}'")
    scored = [
        (float(v.tags.get(schema.VersionTag.VAL_ACC1, "-1")), int(v.version)) for v in versions
    ]
    if not scored:
        raise TrackingError(f"registered model {registered_name!r} has no versions")
    _, best = max(scored)
    c.set_registered_model_alias(registered_name, schema.CHAMPION_ALIAS, str(best))
    return str(best)


def resolve_model_uri(model_uri: str) -> tuple[str, str]:
    """``(models:/<name>/<version>, source run id)`` of a ``models:/`` or ``runs:/`` URI."""
    c = runs.client()
    try:
        if model_uri.startswith("models:/"):
            body = model_uri.removeprefix("models:/")
            name, _, ref = body.partition("@") if "@" in body else body.rpartition("/")
            if "@" in body:
                mv = c.get_model_version_by_alias(name, ref)
            elif ref.isdigit():
                mv = c.get_model_version(name, ref)
            else:
                raise TrackingError(
                    f"model_uri {model_uri!r} must be models:/<name>/<version> "
                    f"or models:/<name>@<alias>"
                )
            return f"models:/{mv.name}/{mv.version}", mv.run_id
        if model_uri.startswith("runs:/"):
            run_id = model_uri.removeprefix("runs:/").split("/")[0]
            runs.get_run(run_id)
            return model_uri, run_id
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(
            f"model_uri {model_uri!r} does not resolve on "
            f"{mlflow.get_tracking_uri()} ({runs.error_line(e)[:160]})"
        ) from None
    raise TrackingError(f"model_uri {model_uri!r} must start with models:/ or runs:/")


def load_classifier(model_uri: str, device: torch.device) -> tuple[nn.Module, ModelInfo | None]:
    """Load a registered classifier onto ``device``, reading tensors only.

    ltexp versions are rebuilt from their safetensors weights (any device); other models fall
    back to ``mlflow.pytorch.load_model`` (CPU).
    """
    from ltexp.models import build_model

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        except Exception as e:  # noqa: BLE001
            raise TrackingError(
                f"cannot download model {model_uri!r} ({runs.error_line(e)[:160]})"
            ) from None
        info_path = local / "extra_files" / MODEL_INFO_FILE
        if not info_path.is_file():
            model = mlflow.pytorch.load_model(str(local))
            return model.to(device) if device.type == "cpu" else model, None
        raw: dict[str, Any] = json.loads(info_path.read_text())
        info = ModelInfo(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})
        model = build_model(info.model, info.num_classes, pretrained=False, head=info.head)
        model.load_state_dict(load_weights(local / "extra_files" / WEIGHTS_FILE))
    return model.to(device).eval(), info
