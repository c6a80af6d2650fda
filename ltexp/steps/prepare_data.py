"""The prepare_data step: build the splits of the protocol and record them in one MLflow run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import yaml

from ltexp import schema
from ltexp.cells import data_key, data_protocol
from ltexp.config import Config
from ltexp.data import SPLITS, load_source, prepare
from ltexp.data.prepared import manifest_bytes, save_indices
from ltexp.report.plots import class_counts_figure
from ltexp.timing import timed
from ltexp.tracking import runs
from ltexp.tracking.inputs import log_split_inputs


@timed("prepare")
def run_prepare_data(
    cfg: Config, parent_run_id: str | None = None, claim_launched: bool = True
) -> str:
    """Prepare the configured dataset; return the prepare_data run id.

    Everything that can fail on bad input (unknown names, sizes, missing or corrupt files) is
    checked before the run is created.

    Args:
        parent_run_id: the study run, when the study prepares the data.
        claim_launched: become the run ``mlflow run`` created for this process (false when
            another step of this process owns it).
    """
    d = cfg.data
    source = load_source(d.dataset, d.data_root, d.download, **cfg.dataset_options())
    proto = data_protocol(cfg, source)
    prepared, plan = prepare(source, proto)
    exp_id = runs.resolve_experiment(cfg.experiment, default=d.dataset)
    shape = (
        f"{proto.profile} profile, imbalance ratio {proto.imbalance_ratio:g}"
        if proto.mode == "protocol"
        else "long-tailed as given"
    )
    description = f"Splits of {source.name} ({shape}, seed {proto.seed}): " + ", ".join(
        f"{s} {len(prepared.splits[s]):,}" for s in SPLITS if prepared.has(s)
    )
    tags = {schema.CONFIG_HASH: data_key(cfg), schema.DATA_DIGEST: prepared.digest()}
    run_id = runs.launched_run_id() if claim_launched and not parent_run_id else None
    with runs.step_run(
        schema.Step.PREPARE_DATA,
        experiment_id=exp_id,
        run_id=run_id,
        run_name=schema.prepare_run_name(
            source.name, proto.profile, proto.imbalance_ratio, proto.seed, proto.mode == "given"
        ),
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
                "split_mode": proto.mode,
                "holdout_fraction": proto.holdout_fraction,
                "num_classes": source.num_classes,
                **{f"{schema.DATASET_OPTION_PREFIX}{k}": v for k, v in source.options.items()},
                **(
                    {schema.IMAGE_CACHE_DIGEST: source.checksums["image_cache"]["sha256"]}
                    if "image_cache" in source.checksums
                    else {}
                ),
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            (out / schema.CONFIG_ARTIFACT).write_text(
                yaml.safe_dump(cfg.to_dict(("data",)), sort_keys=False)
            )
            (out / schema.MANIFEST_ARTIFACT).write_bytes(manifest_bytes(prepared.manifest))
            save_indices(plan, out / schema.SPLIT_INDICES_ARTIFACT)
            if source.skipped:
                (out / schema.SKIPPED_IMAGES_ARTIFACT).write_text("\n".join(source.skipped) + "\n")
            class_counts_figure(
                {s: prepared.class_counts(s) for s in ("train_lt", plan.group_split)},
                plan.class_rank,
                out / schema.CLASS_COUNTS_FIGURE,
                d.log_scale_counts,
            )
            mlflow.log_artifacts(str(out))
        if "skip_bad_images" in source.options:
            mlflow.log_metric(schema.SKIPPED_IMAGES, len(source.skipped))
        log_split_inputs(prepared, tuple(s for s in SPLITS if prepared.has(s)))
        return run.info.run_id
