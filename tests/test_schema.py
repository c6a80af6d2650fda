"""The schema owns every name: a tiny study logs only declared keys, and every declared name is
used by the code."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import mlflow
import pytest

from ltexp import schema
from ltexp.config import all_fields
from ltexp.study.run import run_study

LTEXP = Path(schema.__file__).resolve().parent


def _all_runs() -> dict[str, list]:
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    out: dict[str, list] = {}
    for run in runs:
        out.setdefault(run.data.tags[schema.STEP], []).append(run)
    return out


@pytest.fixture
def study(tiny_config):
    cfg = tiny_config(
        models="tiny_cnn", losses="ldam", train_splits="lt", epochs=1, study_stage2="none,tau_norm"
    )
    return run_study(cfg)


def test_every_logged_key_is_declared(study) -> None:
    runs = _all_runs()
    # tune: tests/study/test_tune.py; ensemble: tests/steps/test_ensemble.py
    assert set(runs) == set(schema.Step) - {schema.Step.TUNE, schema.Step.ENSEMBLE}
    assert len(runs["evaluate"]) == 2  # of the train run and of its tau_norm second stage
    config_keys = set(all_fields())
    declared_tags = set(schema.RUN_TAGS)
    for step, step_runs in runs.items():
        for run in step_runs:
            own_tags = {k for k in run.data.tags if not k.startswith("mlflow.")}
            assert own_tags <= declared_tags, (step, own_tags - declared_tags)
    (train,) = runs["train"]
    allowed = config_keys | set(schema.TRAIN_RESOLVED_PARAMS) | {"preset"}
    allowed |= {schema.NUM_PARAMS, schema.TRAINABLE_PARAMS, schema.WORLD_SIZE}
    allowed |= set(schema.MODEL_DIGEST_PARAMS)
    assert set(train.data.params) <= allowed, set(train.data.params) - allowed
    assert "ldam_max_margin" in train.data.params  # the loss's own hyper-parameters
    metrics = set(train.data.metrics)
    train_metrics = {
        *schema.EPOCH_METRICS,
        schema.BEST_VAL_ACC1,
        schema.BEST_EPOCH,
        *schema.HEADLINE_TEST_METRICS,
    }
    assert metrics <= train_metrics
    (decouple,) = runs["decouple"]
    assert set(decouple.data.params) <= set(train.data.params) | set(schema.DECOUPLE_PARAMS)
    assert {p for p in decouple.data.params if p not in train.data.params} == {
        "stage2",
        "stage2_tau",
        "stage2_tau_form",
        "stage1_run_id",
    }
    # τ-norm trains no epoch; its evaluation writes the headline test metrics as for a train run
    assert set(decouple.data.metrics) == {
        schema.BEST_VAL_ACC1,
        schema.BEST_EPOCH,
        *schema.HEADLINE_TEST_METRICS,
    }
    evaluations = {r.data.params[schema.TRAIN_RUN_ID]: r for r in runs["evaluate"]}
    assert set(evaluations) == {train.info.run_id, decouple.info.run_id}
    for evaluation in evaluations.values():
        assert set(evaluation.data.params) == set(schema.EVALUATE_PARAMS)
        assert set(evaluation.data.metrics) == set(schema.TEST_METRICS)
    evaluate = evaluations[train.info.run_id]
    assert evaluate.info.run_name == schema.evaluate_run_name(train.info.run_name)
    (prepare,) = runs["prepare_data"]
    extra = {p for p in prepare.data.params if p not in schema.PREPARE_DATA_PARAMS}
    assert all(p.startswith(schema.DATASET_OPTION_PREFIX) for p in extra)
    (main,) = runs["main"]
    assert set(main.data.params) == set(schema.STUDY_PARAMS)
    assert set(main.data.metrics) == {schema.CELLS_RUN, schema.CELLS_REUSED}
    (aggregate,) = runs["aggregate"]
    # the study's description opens its report in the UI
    report = f"/runs/{aggregate.info.run_id}/artifacts/{schema.REPORT_HTML})"
    assert report in main.data.tags[schema.DESCRIPTION_TAG]
    # and its results table: a view saved on the experiment, in MLflow's shared-view format
    exp = mlflow.get_experiment(main.info.experiment_id)
    view = json.loads(exp.tags[f"mlflow.sharedViewState.{schema.RESULTS_VIEW}"])
    assert view["searchFilter"] == "tags.`ltexp.step` = 'train'"
    assert view["orderByKey"] == "metrics.`test_balanced_acc1`" and view["orderByAsc"] is False
    assert view["selectedColumns"] == [
        *(f"params.`{p}`" for p in ("model", "loss", "train_split", "seed")),
        *(f"metrics.`test_{g}_acc1`" for g in ("balanced", "lt", "head", "middle", "tail")),
    ]
    assert "viewStateShareKey=ltexp-results)" in main.data.tags[schema.DESCRIPTION_TAG]
    # the view's filter is one MLflow's search accepts, and finds every train run
    found = mlflow.search_runs([exp.experiment_id], view["searchFilter"], output_format="list")
    assert {r.info.run_id for r in found} == {r.info.run_id for r in runs["train"]}
    # the compare page's default chart plots the first metric its runs share, in the store's
    # order: the validation accuracy, not train_loss (issue 27)
    assert all(next(iter(r.data.metrics)) == "val_acc1" for r in found)
    assert set(aggregate.data.params) == set(schema.AGGREGATE_PARAMS)
    assert set(aggregate.data.metrics) == {schema.MISSING_CELLS, schema.DUPLICATE_CELLS}
    for run in (prepare, train, evaluate):
        for dataset_input in run.inputs.dataset_inputs:
            tags = {t.key for t in dataset_input.tags if not t.key.startswith("mlflow.")}
            assert tags == set(schema.INPUT_TAGS)
    # and every declared name is logged by such a study (or only by the runs that need it)
    logged_tags = {k for rs in runs.values() for r in rs for k in r.data.tags}
    assert set(schema.RUN_TAGS) - logged_tags == set(schema.CONDITIONAL_TAGS)
    assert metrics == train_metrics
    assert set(schema.TRAIN_RESOLVED_PARAMS) <= set(train.data.params)
    client = mlflow.MlflowClient()
    (stage1,) = client.search_model_versions(
        f"name = '{schema.registered_model_name('digits', 'tiny_cnn', 'ldam', 'lt')}'"
    )
    (stage2,) = client.search_model_versions(
        f"name = '{schema.registered_model_name('digits', 'tiny_cnn', 'ldam', 'lt', 'tau_norm')}'"
    )
    every = {t.value for t in schema.VersionTag} - {schema.VersionTag.MEMBERS}  # an ensemble's
    assert set(stage2.tags) == every
    assert set(stage1.tags) == every - {schema.VersionTag.METHOD}


def _schema_names() -> set[str]:
    tree = ast.parse(Path(schema.__file__).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    return {n for n in names if not n.startswith("_")}


def test_every_declared_name_is_used_outside_the_schema() -> None:
    sources = "\n".join(p.read_text() for p in LTEXP.rglob("*.py") if p.name != "schema.py")
    # catalogs the test above checks against what runs log, and names the schema builds
    # other names from
    catalogs = {
        "RUN_TAGS",
        "CONDITIONAL_TAGS",
        "INPUT_TAGS",
        "EPOCH_METRICS",
        "TEST_METRICS",
        "TRAIN_RESOLVED_PARAMS",
        "EVALUATE_PARAMS",
        "PREPARE_DATA_PARAMS",
        "STUDY_PARAMS",
        "AGGREGATE_PARAMS",
        "HEADLINE_TEST_METRICS",
        "TEST_GROUP_SPLIT",
        "TUNE_PARAMS",
        "TUNE_METRICS",
        "DECOUPLE_PARAMS",
        "TEST_METRIC_SPLIT",
    }
    internal = {"INPUT_CONTEXT", "TEST_CONTEXT", "TEST_KINDS", "REGISTERED_PREFIX", *catalogs}
    unused = sorted(n for n in _schema_names() - internal if f"schema.{n}" not in sources)
    assert unused == []
