"""The ensemble step: registered models averaged into one model, registered and evaluated like
any other (``ltexp ensemble --model-uri A --model-uri B``; ``mlflow run . -e ensemble``).

Order of work: resolve every member to its version and its run (ltexp's train or decouple runs
only); refuse members that cannot be one model (other data, another training set, other
classes or image size); load them from their safetensors weights; find an ensemble of the same
versions already built, or build it in an ``ensemble`` run: its validation top-1, its members as
tags, a registered version (``ltexp-<dataset>-ensemble-…``) that loads with
``mlflow.pytorch.load_model``, ``mlflow.pyfunc.load_model`` and ``ltexp.load_model``. Its
evaluation is the evaluate step's work (``ltexp.study.run.run_ensembled`` chains them, as for a
cell).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import mlflow
import torch

from ltexp import cells, schema
from ltexp.config import Config
from ltexp.data.pipeline import ImageFormat, evaluation_batches
from ltexp.data.splits import TRAINING_SETS
from ltexp.errors import ConfigError
from ltexp.models.ensemble import ENSEMBLE, Ensemble
from ltexp.tracking import claims, registered_models, runs
from ltexp.tracking.datasets import load_prepared
from ltexp.tracking.questions import finished_ensemble
from ltexp.training import TrainResult, resolve_device, validate
from ltexp.training.setup import autocast_dtype

log = logging.getLogger(__name__)
MEMBER_STEPS = (schema.Step.TRAIN, schema.Step.DECOUPLE)  # an ensemble is never a member


def resolve_members(uris: Sequence[str]) -> list[tuple[str, mlflow.entities.Run]]:
    """``(models:/<name>/<version>, its run)`` of each member, in the order given.

    Raises:
        ConfigError: fewer than two distinct versions.
        TrackingError: a URI that is not an ltexp train or decouple run's model.
    """
    uris = [u.strip() for u in uris if u.strip()]
    if len(uris) < 2:
        raise ConfigError(
            f"an ensemble needs at least two registered models (--model-uri A --model-uri B, "
            f"or -P members=A,B); got {len(uris)}"
        )
    out, seen = [], {}
    for uri in uris:
        run, version = registered_models.model_run(None, uri, MEMBER_STEPS)
        if version in seen:
            raise ConfigError(f"{uri} and {seen[version]} are the same version ({version})")
        seen[version] = uri
        out.append((version, run))
    return out


def _common(values: list[str], what: str, why: str) -> str:
    if len(set(values)) != 1:
        raise ConfigError(f"the members have different {what} ({', '.join(values)}); {why}")
    return values[0]


def member_label(run: mlflow.entities.Run) -> str:
    """A member as an ensemble's name lists it: ``<model>-<loss>`` and its variant."""
    p = run.data.params
    ident = runs.recorded_identity(run)
    variant = cells.variant(ident) if ident else ""
    label = f"{p.get('model', '?').replace(':', '_')}-{p.get('loss', '?')}"
    return f"{label}-{variant}" if variant else label


def run_ensemble(
    cfg: Config, members: Sequence[str] | None = None, parent_run_id: str | None = None
) -> TrainResult:
    """Build the ensemble of ``members`` (default ``cfg.ensemble.members``) and register it; an
    ensemble of the same versions built before is returned instead (unless ``force``)."""
    asked = [m.strip() for m in (members if members is not None else cfg.ensemble.members)]
    resolved = resolve_members(asked)
    member_runs = [run for _, run in resolved]
    params = [r.data.params for r in member_runs]
    digest = _common(
        [r.data.tags.get(schema.DATA_DIGEST, "?") for r in member_runs],
        "data digests",
        "an ensemble is tested on one test set: ensemble models trained on the same prepared data",
    )
    split = _common(
        [p.get("train_split", "?") for p in params],
        "training sets",
        "ensemble models of one training set (balanced or lt)",
    )
    dataset = params[0].get("dataset", "?")
    infos, models = [], []
    for version, _ in resolved:
        model, info = registered_models.load_classifier(version, "cpu")
        if info.members:
            raise ConfigError(f"{version} is an ensemble; ensemble its members instead")
        infos.append(info)
        models.append(model)
    _common([str(i.num_classes) for i in infos], "numbers of classes", "they are other tasks")
    _common([str(i.image_size) for i in infos], "input sizes", "an ensemble takes one input")
    names = [i.class_names for i in infos if i.class_names]
    if len({tuple(n) for n in names}) > 1:
        raise ConfigError("the members name their classes differently; they are other tasks")
    combine = cfg.ensemble.combine
    versions = [v for v, _ in resolved]
    identity = {
        cells.KIND: ENSEMBLE,
        "members": sorted(versions),
        "combine": combine,
        cells.DATA_DIGEST: digest,
        "train_split": split,
    }
    chash = cells.identity_hash(identity)
    labels = [member_label(r) for r in member_runs]
    name = schema.ensemble_run_name(labels, split, combine)
    registered = schema.ensemble_model_name(dataset, labels, split, combine)
    exp_id = member_runs[0].info.experiment_id
    built = None if cfg.study.force else finished_ensemble(exp_id, chash)
    if built is not None:
        log.info("ensemble %s was built already (run %s)", name, built.info.run_id)
        return TrainResult(
            built.info.run_id,
            built.data.metrics.get(schema.BEST_VAL_ACC1, -1.0),
            0,
            built.data.tags.get(schema.MODEL_URI, ""),
        )
    ensemble = Ensemble(models, combine, [(i.mean, i.std) for i in infos])
    info = registered_models.ModelInfo(
        ENSEMBLE,
        infos[0].num_classes,
        "linear",
        infos[0].image_size,
        infos[0].mean,
        infos[0].std,
        names[0] if names else (),
        tuple(infos),
        combine,
    )
    data_run = member_runs[0].data.tags[schema.DATA_RUN]
    prepared = load_prepared(data_run, cfg.data.data_root, cfg.data.download)
    device = resolve_device(cfg.runtime.device)
    launched, wrapper = (None, None) if parent_run_id else runs.launched_run_for(exp_id)
    with claims.claimed_run(
        schema.Step.ENSEMBLE,
        exp_id,
        identity,
        chash,
        run_name=name,
        tags={
            schema.DATA_RUN: data_run,
            schema.DATA_DIGEST: digest,
            schema.CELL: name,
            schema.ENSEMBLE_MEMBERS: ",".join(versions),
        },
        parent_run_id=parent_run_id,
        launched=launched,
        wrapper=wrapper,
        once=True,
        description=f"Ensemble ({combine} averaged) of {', '.join(versions)} on {dataset} "
        f"{TRAINING_SETS[split]}; registered as {registered}.",
    ) as run:
        val_acc1 = _validation_top1(ensemble, info, prepared, cfg, device)
        values = (
            dataset,
            ENSEMBLE,
            "+".join(dict.fromkeys(p.get("loss", "?") for p in params)),
            split,
            "+".join(sorted({p.get("seed", "") for p in params})),
            combine,
            len(versions),
            # as asked (what `mlflow run -P members=…` logged already), and as resolved
            ",".join(m for m in asked if m),
            ",".join(versions),
            sum(p.numel() for p in ensemble.parameters()),
        )
        runs.log_params(dict(zip(schema.ENSEMBLE_PARAMS, values, strict=True)))
        runs.log_once({schema.BEST_VAL_ACC1: val_acc1})
        result = TrainResult(run.info.run_id, val_acc1, 0, "")
        if cfg.train.register:
            version_tags = {
                schema.VersionTag.RUN_ID: run.info.run_id,
                schema.VersionTag.VAL_ACC1: f"{val_acc1:.6f}",
                schema.VersionTag.DATA_DIGEST: digest,
                schema.VersionTag.CONFIG_HASH: chash,
                schema.VersionTag.CELL: cells.cell_key(identity),
                schema.VersionTag.STAGE: ENSEMBLE,
                schema.VersionTag.MEMBERS: ",".join(versions),
            }
            # a process killed while its version was created left it READY on a FAILED run
            registered_models.drop_orphan_versions(registered, chash)
            uri = registered_models.log_and_register(
                ensemble,
                info,
                registered,
                version_tags,
                logged_name=schema.logged_model_name(name),
                params={"dataset": dataset, "members": ",".join(versions), "combine": combine},
            )
            mlflow.set_tag(schema.MODEL_URI, uri)
            registered_models.update_champion(registered, cells.cell_key(identity))
            result.model_uri = uri
    return result


def _validation_top1(
    ensemble: Ensemble,
    info: registered_models.ModelInfo,
    prepared,
    cfg: Config,
    device: torch.device,
) -> float:
    """The ensemble's top-1 on the validation split (what chooses a champion)."""
    val = prepared.splits["val"]
    amp = autocast_dtype(cfg.runtime.precision, device)
    image_format = ImageFormat(device, info.image_size, amp or torch.float32, info.mean, info.std)
    batches = evaluation_batches(val.images, val.labels, cfg.runtime.eval_batch_size, image_format)
    model = ensemble.to(device).eval()
    result = validate(model, batches, prepared.groups(), info.num_classes, amp)
    ensemble.to("cpu")
    return result.acc1
