"""The prepare_data step: build the splits of the protocol and record them in one MLflow run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import yaml

from ltexp.config import Config
from ltexp.data import SPLITS, PreparedData, prepare
from ltexp.data.prepared import manifest_bytes, save_indices
from ltexp.report.plots import class_counts_figure
from ltexp.steps.data import data_key, load_configured_source, protocol
from ltexp.tracking import runs, schema

# mlflow.log_input context of each split
_CONTEXT = {"train_balanced": "training", "train_lt": "training", "val": "validation"}


def run_prepare_data(cfg: Config, parent_run_id: str | None = None) -> str:
    """Prepare the configured dataset; return the prepare_data run id.

    Everything that can fail on bad input (unknown names, sizes, missing or corrupt files) is
    checked before the run is created.
    """
    source = load_configured_source(cfg.data)
    proto = protocol(cfg.data, source)
    prepared, plan = prepare(source, proto)
    exp_id = runs.resolve_experiment(cfg.experiment, default=cfg.data.dataset)
    description = (
        f"Splits of {source.name} ({proto.profile} profile, imbalance ratio "
        f"{proto.imbalance_ratio:g}, seed {proto.seed}): "
        + ", ".join(f"{s} {len(prepared.splits[s]):,}" for s in SPLITS)
    )
    tags = {schema.CONFIG_HASH: data_key(cfg.data), schema.DATA_DIGEST: prepared.digest()}
    run_id = None if parent_run_id else runs.launched_run_id()
    with runs.step_run(
        schema.Step.PREPARE_DATA,
        experiment_id=exp_id,
        run_id=run_id,
        run_name=f"prepare-{source.name}-{proto.profile}-ir{proto.imbalance_ratio:g}-s{proto.seed}",
        parent_run_id=parent_run_id,
        tags=tags,
        description=description,
    ) as run:
        runs.log_params(
            {
                "dataset": source.name,
                "profile": proto.profile,
                "imbalance_ratio": proto.imbalance_ratio,
                "pareto_alpha": proto.pareto_alpha,
                "n_max_train": proto.n_train,
                "n_max_test": proto.n_test,
                "seed": proto.seed,
                "class_order": proto.class_order,
                "num_classes": source.num_classes,
                **{f"dataset_{k}": v for k, v in source.options.items()},
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            (out / schema.CONFIG_ARTIFACT).write_text(
                yaml.safe_dump(cfg.to_dict(("data",)), sort_keys=False)
            )
            (out / schema.MANIFEST_ARTIFACT).write_bytes(manifest_bytes(prepared.manifest))
            save_indices(plan, out / schema.SPLIT_INDICES_ARTIFACT)
            class_counts_figure(
                {s: prepared.class_counts(s) for s in ("train_lt", "test_lt")},
                plan.class_rank,
                out / schema.CLASS_COUNTS_FIGURE,
                cfg.data.log_scale_counts,
            )
            mlflow.log_artifacts(str(out))
        log_split_inputs(prepared, run_id=run.info.run_id)
        return run.info.run_id


def log_split_inputs(
    prepared: PreparedData, run_id: str | None = None, splits: tuple[str, ...] = SPLITS
) -> None:
    """``mlflow.log_input`` for each split, with an explicit sha256 over every byte.

    MLflow's automatic digest hashes only the first 10,000 elements. MLflow caps a dataset digest
    at 36 characters, so the digest is the sha256's first 32 hex digits (128 bits) and the full
    sha256 is the input tag ``ltexp.sha256``.
    """
    for name in splits:
        split = prepared.splits[name]
        digest = prepared.manifest["splits"][name]["digest"]
        dataset = mlflow.data.from_numpy(
            split.images,
            targets=split.labels,
            name=f"{prepared.dataset}/{name}",
            digest=digest[:32],
        )
        mlflow.log_input(
            dataset,
            context=_CONTEXT.get(name, "testing"),
            tags={"ltexp.sha256": digest, "ltexp.split": name},
        )
