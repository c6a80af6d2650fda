"""A pickled model planted as champion runs nothing through any ltexp entry point."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
import torch

from ltexp import schema
from ltexp.cli import main
from ltexp.errors import TrackingError
from ltexp.study.run import run_cell, run_study

NAME = "ltexp-digits-tiny_cnn-ce-lt"


class Planted(torch.nn.Module):
    """A module whose unpickling runs a shell command (what an attacker would register)."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def planted(tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A trained cell whose champion (and train run's model tag) is a planted pickle."""
    cfg = tiny_config(loss="ce", epochs=1, models="tiny_cnn", losses="ce", train_splits="lt")
    cell = run_cell(cfg)
    marker = tmp_path / "pwned"
    Planted.marker = str(marker)
    with mlflow.start_run(run_id=cell.train.run_id):  # from the real train run, as a tag writer can
        info = mlflow.pytorch.log_model(
            Planted(),
            name="evil",
            serialization_format="pickle",
            registered_model_name=NAME,
            pip_requirements=["torch"],  # no inference: it would load (and run) the model here
        )
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    client.set_registered_model_alias(NAME, schema.CHAMPION_ALIAS, version)
    client.set_tag(cell.train.run_id, schema.MODEL_URI, f"models:/{NAME}/{version}")
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow 3.17's default
    return cfg, cell, marker


def test_no_entry_point_loads_the_planted_champion(
    planted, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, cell, marker = planted
    champion = f"models:/{NAME}@{schema.CHAMPION_ALIAS}"
    assert main(["evaluate", "--preset", "demo", "--model-uri", champion]) == 2
    assert main(["evaluate", "--preset", "demo", "--train-run", cell.train.run_id]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all("not registered by ltexp and is refused" in e for e in errors)
    import ltexp

    with pytest.raises(TrackingError, match="refused"):
        ltexp.load_model(champion)  # the README's safe load
    # a study that finds the cell trained but not evaluated evaluates its model: refused too
    mlflow.MlflowClient().delete_run(cell.evaluate_run_id)
    with pytest.raises(TrackingError, match="refused"):
        run_study(cfg)
    # and a user protecting their own loads is protected by MLflow itself
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(mlflow.exceptions.MlflowException, match="pickle is disallowed"):
        mlflow.pytorch.load_model(champion)
    assert not marker.exists()


# --- hostile registered versions (issue 24) --------------------------------------------------


def _copy_of_a_version(trained, tmp_path: Path, edit) -> str:
    """A new version of the trained cell's model whose files are the real ones, then ``edit``ed,
    logged from the real train run (as anyone who can write to the store can)."""
    import shutil

    from ltexp.tracking.registered_models import EXTRA_FILES_DIR

    _, _, cell = trained
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=cell.train.model_uri, dst_path=str(tmp_path / "real")
        )
    )
    extra = local / EXTRA_FILES_DIR
    edit(extra)
    files = [str(p) for p in sorted(extra.iterdir())]
    copy = tmp_path / "copy"
    shutil.copytree(extra, copy)
    name = f"ltexp-digits-copy-{tmp_path.name}"  # the shared cell's own model stays as it is
    with mlflow.start_run(run_id=cell.train.run_id):
        info = mlflow.pytorch.log_model(
            torch.nn.Linear(2, 2),
            name="copy",
            serialization_format="pickle",
            registered_model_name=name,
            extra_files=files,
            pip_requirements=["torch"],
        )
    return f"models:/{name}/{info.registered_model_version}"


def _json_edit(**fields):
    def edit(extra: Path) -> None:
        import json

        path = extra / "ltexp_model.json"
        raw = json.loads(path.read_text())
        raw.update(fields)
        path.write_text(json.dumps(raw))

    return edit


def _nested(depth: int):
    def edit(extra: Path) -> None:
        (extra / "ltexp_model.json").write_text("[" * depth + "]" * depth)

    return edit


def _nan_weights(extra: Path) -> None:
    from ltexp.checkpoint import load_weights, save_weights

    path = extra / "weights.safetensors"
    weights = load_weights(path)
    next(t for t in weights.values() if t.is_floating_point()).fill_(float("nan"))
    save_weights(weights, path)


# each edit of a version's files, and what reading its description says of it
EDITS = {
    "num_classes 1e12": (_json_edit(num_classes=10**12), "num_classes must be an integer"),
    'num_classes "10"': (_json_edit(num_classes="10"), "num_classes must be an integer"),
    "num_classes 10.7": (_json_edit(num_classes=10.7), "num_classes must be an integer"),
    "an unknown model": (_json_edit(model="os.system"), "unknown model 'os.system'"),
    "class names of another count": (_json_edit(class_names=["a"]), "a list of 10 names"),
    "class names not text": (_json_edit(class_names=[1] * 10), "names of at most 200"),
    "a class name of 10 kB": (
        _json_edit(class_names=["x" * 10_000] * 10),
        "names of at most 200",
    ),
    "JSON nested 600,000 deep": (_nested(600_000), "more than a model description holds"),
    "JSON nested 30,000 deep": (_nested(30_000), "not JSON"),
    "weights of NaNs": (_nan_weights, None),
}


@pytest.mark.parametrize("edit", [e for e, _ in EDITS.values()], ids=EDITS)
def test_a_version_whose_files_were_changed_is_refused(trained, tmp_path: Path, edit) -> None:
    """The files a version is loaded from are the ones its run recorded the digests of."""
    import ltexp

    uri = _copy_of_a_version(trained, tmp_path, edit)
    with pytest.raises(TrackingError, match="is not the file its run registered"):
        ltexp.load_model(uri)


DESCRIPTIONS = {k: v for k, v in EDITS.items() if v[1]}


@pytest.mark.parametrize("edit,message", DESCRIPTIONS.values(), ids=DESCRIPTIONS)
def test_a_model_description_is_checked_field_by_field(tmp_path: Path, edit, message) -> None:
    """Without the run's digests (a version registered before they were recorded), the
    description itself is checked before anything is built."""
    import json

    from ltexp.tracking.registered_models import ModelInfo, read_model_info

    extra = tmp_path / "extra"
    extra.mkdir()
    info = ModelInfo("tiny_cnn", 10, "linear", 32, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    (extra / "ltexp_model.json").write_text(json.dumps(info.__dict__))
    assert read_model_info(extra / "ltexp_model.json", "m") == info
    edit(extra)
    with pytest.raises(TrackingError, match=message):
        read_model_info(extra / "ltexp_model.json", "m")


def test_a_description_from_before_class_names_still_loads(tmp_path: Path) -> None:
    import json

    from ltexp.tracking.registered_models import ModelInfo, read_model_info

    info = ModelInfo("tiny_cnn", 10, "linear", 32, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    older = {k: v for k, v in info.__dict__.items() if k != "class_names"}
    (tmp_path / "ltexp_model.json").write_text(json.dumps(older))
    assert read_model_info(tmp_path / "ltexp_model.json", "m").class_names == ()
    named = {**older, "class_names": [f"c{i}" for i in range(10)]}
    (tmp_path / "ltexp_model.json").write_text(json.dumps(named))
    assert read_model_info(tmp_path / "ltexp_model.json", "m").class_names[3] == "c3"


def test_a_model_of_nans_is_not_evaluated(trained, tmp_path: Path) -> None:
    """Even with matching digests (a run that registered NaN weights itself)."""
    from ltexp.tracking import registered_models

    real = registered_models._registered_digests
    try:
        registered_models._registered_digests = lambda uri: {}
        uri = _copy_of_a_version(trained, tmp_path, _nan_weights)
        with pytest.raises(TrackingError, match="non-finite weights"):
            registered_models.load_classifier(uri, "cpu")
    finally:
        registered_models._registered_digests = real


def test_a_version_without_a_run_or_with_files_outside_its_run_is_refused_unread(
    trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    import ltexp

    # a temporary folder of this test's own: other processes may create theirs in /tmp meanwhile
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))

    client = mlflow.MlflowClient()
    name = "ltexp-digits-planted"
    client.create_registered_model(name)
    no_run = client.create_model_version(name, source=str(tmp_path))
    with pytest.raises(TrackingError, match="has no run that registered it"):
        ltexp.load_model(f"models:/{name}/{no_run.version}")
    cell = trained[2]
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "secret").write_text("x")
    elsewhere = client.create_model_version(name, source=str(outside), run_id=cell.train.run_id)
    with pytest.raises(TrackingError, match="outside its run's artifacts"):
        ltexp.load_model(f"models:/{name}/{elsewhere.version}")
    assert not any(private.iterdir())  # nothing was copied
    # issue 39: evaluate and decouple of another tool's version were a TypeError
    from ltexp.cli import main

    other = "someone-elses-model"
    client.create_registered_model(other)
    foreign = client.create_model_version(other, source=str(tmp_path))
    for command in (["evaluate"], ["decouple", "--stage2", "crt"]):
        args = [*command, "--preset", "demo", "--model-uri", f"models:/{other}/{foreign.version}"]
        assert main(args) == 2


def _ensemble_description(**changes: object) -> dict:
    from dataclasses import asdict

    from ltexp.tracking.registered_models import ModelInfo

    member = ModelInfo("tiny_cnn", 10, "linear", 32, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    info = ModelInfo(
        "ensemble", 10, "linear", 32, member.mean, member.std, (), (member, member), "logits"
    )
    return {**asdict(info), **changes}


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"members": []}, "a list of 2 to 64 members"),
        ({"members": "tiny_cnn,tiny_cnn"}, "a list of 2 to 64 members"),
        ({"combine": "vote"}, "combine must be one of logits, probs"),
        ({"members": [_ensemble_description()] * 2}, "an ensemble's member cannot be"),
        ({"members": [{"model": "os.system"}] * 2}, "it needs exactly the fields"),
        (
            {"members": [{**_ensemble_description()["members"][0], "num_classes": 5}] * 2},
            "must all have its num_classes",
        ),
        ({"members": [_ensemble_description()["members"][0]] * 65}, "a list of 2 to 64"),
    ],
    ids=["none", "text", "combine", "nested", "member fields", "classes", "too many"],
)
def test_an_ensembles_description_is_checked_member_by_member(
    tmp_path: Path, changes: dict, message: str
) -> None:
    import json

    from ltexp.tracking.registered_models import read_model_info

    path = tmp_path / "ltexp_model.json"
    path.write_text(json.dumps(_ensemble_description()))
    assert len(read_model_info(path, "m").members) == 2
    path.write_text(json.dumps(_ensemble_description(**changes)))
    with pytest.raises(TrackingError, match=message):
        read_model_info(path, "m")
    # members and combine on a model that is not an ensemble are refused too
    plain = {**_ensemble_description()["members"][0], "combine": "logits"}
    path.write_text(json.dumps(plain))
    with pytest.raises(TrackingError, match="belong to an ensemble only"):
        read_model_info(path, "m")
