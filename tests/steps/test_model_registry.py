"""The Model Registry as researchers use it: load, predict, serve a champion from a fresh
process; logged models and runs that the MLflow UI can compare; bad model URIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

import ltexp
from ltexp import schema
from ltexp.cli import main
from ltexp.tracking.datasets import load_prepared
from ltexp.tracking.registered_models import logged_model_id
from tests.conftest import free_port

CHAMPION = "models:/ltexp-digits-tiny_cnn-bs-lt@champion"


def _fresh_python(code: str, cwd: Path) -> str:
    """Run ``code`` in a new interpreter with only MLFLOW_TRACKING_URI pointing at the store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "PYTHONPATH"}
    env.update(MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(), MLFLOW_DISABLE_TELEMETRY="true")
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_champion_loads_evals_moves_predicts_and_trains_in_a_fresh_process(
    trained, tmp_path: Path
) -> None:
    code = f"""
import mlflow, numpy as np, torch
m = mlflow.pytorch.load_model({CHAMPION!r})
m.eval()
m.to("cpu")
with torch.no_grad():
    print("logits", tuple(m(torch.randn(5, 3, 32, 32)).shape))
m.train()
m(torch.randn(4, 3, 32, 32)).sum().backward()  # a real module: it trains
print("grads", all(p.grad is not None for p in m.parameters()))
p = mlflow.pyfunc.load_model({CHAMPION!r})
print("pyfunc", p.predict(np.random.randn(3, 3, 32, 32).astype(np.float32)).shape)
try:
    p.predict(np.zeros((3, 3, 8, 8), np.float32))
except mlflow.exceptions.MlflowException as e:
    print("schema error", "enforce schema" in str(e))
import ltexp
t = ltexp.load_model({CHAMPION!r})
y = t(torch.zeros(2, 3, 32, 32))
print("ltexp", type(t).__module__.startswith("ltexp"), t.training, tuple(y.shape))
"""
    out = _fresh_python(code, tmp_path).splitlines()
    assert out == [
        "logits (5, 10)",
        "grads True",
        "pyfunc (3, 10)",
        "schema error True",
        "ltexp True False (2, 10)",
    ]


def test_the_three_loads_give_the_same_logits(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    import ltexp

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow 3.17's default
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        scripted = mlflow.pytorch.load_model(CHAMPION).eval()(x)
        rebuilt = ltexp.load_model(CHAMPION)(x)
    served = mlflow.pyfunc.load_model(CHAMPION).predict(x.numpy())
    assert torch.allclose(scripted, rebuilt, atol=1e-5)
    assert np.allclose(served, rebuilt.numpy(), atol=1e-5)


def test_the_model_carries_its_class_names_for_a_client(trained) -> None:
    """The issue: `mlflow models serve` answers bare logits and a client needed a side table.
    The names travel with the model (its MLmodel metadata, and ltexp_model.json), and the
    documented recipe turns a served answer into probabilities and names."""
    cfg, result, _cell = trained
    meta = mlflow.models.get_model_info(CHAMPION).metadata
    data_run = mlflow.get_run(result.run_id).data.tags[schema.DATA_RUN]
    prepared = load_prepared(data_run, cfg.data.data_root, False)
    assert meta["class_names"] == prepared.class_names and len(meta["class_names"]) == 10
    assert "softmax" in meta["output"] and "class_names" in meta["output"]
    x = np.random.default_rng(1).normal(size=(4, 3, 32, 32)).astype(np.float32)
    logits = mlflow.pyfunc.load_model(CHAMPION).predict(x)
    probabilities = torch.softmax(torch.from_numpy(np.asarray(logits)), dim=1)
    assert torch.allclose(probabilities.sum(1), torch.ones(4))
    names = [meta["class_names"][i] for i in probabilities.argmax(1).tolist()]
    with torch.no_grad():
        expected = ltexp.load_model(CHAMPION)(torch.from_numpy(x)).argmax(1).tolist()
    assert names == [prepared.class_names[i] for i in expected]


def test_pyfunc_answers_probabilities_and_named_classes_on_request(trained) -> None:
    """The issue: a client of `mlflow models serve` needed a side table to name the classes.
    The pyfunc answers logits by default (as mlflow.pytorch's loader), and named probabilities
    or the predicted class when asked, quietly (no torch warning about TorchScript loading)."""
    import warnings

    cfg, result, _cell = trained
    data_run = mlflow.get_run(result.run_id).data.tags[schema.DATA_RUN]
    names = load_prepared(data_run, cfg.data.data_root, False).class_names
    x = np.random.default_rng(2).normal(size=(5, 3, 32, 32)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mlflow.pyfunc.load_model(CHAMPION)
    assert not [w for w in caught if "torch" in str(w.filename)], [str(w) for w in caught]
    with torch.no_grad():
        expected = torch.softmax(ltexp.load_model(CHAMPION)(torch.from_numpy(x)), 1).numpy()
    assert np.asarray(model.predict(x)).shape == (5, 10)  # logits, the default
    assert np.allclose(model.predict(x, params={"output": "logits"}), model.predict(x))
    probabilities = model.predict(x, params={"output": "probabilities"})
    assert list(probabilities.columns) == names
    assert np.allclose(probabilities.to_numpy(), expected, atol=1e-5)
    classes = model.predict(x, params={"output": "classes"})
    assert list(classes.columns) == ["class_index", "class_name", "probability"]
    assert classes["class_index"].tolist() == expected.argmax(1).tolist()
    assert classes["class_name"].tolist() == [names[i] for i in expected.argmax(1)]
    assert np.allclose(classes["probability"], expected.max(1), atol=1e-5)
    with pytest.raises(mlflow.exceptions.MlflowException, match="logits, probabilities, classes"):
        model.predict(x, params={"output": "labels"})
    # issue 39: a NaN, infinite or huge pixel was answered "probability": NaN with HTTP 200
    for bad, message in ((np.nan, "the inputs hold not finite"), (np.inf, "the inputs hold"),
                         (1e38, "or beyond ±10,000")):  # fmt: skip
        poisoned = x.copy()
        poisoned[0, 0, 0, 0] = bad
        for output in ("logits", "classes"):
            with pytest.raises(mlflow.exceptions.MlflowException, match=message) as err:
                model.predict(poisoned, params={"output": output})
            assert err.value.get_http_status_code() == 400
    signature = mlflow.models.get_model_info(CHAMPION).signature
    assert signature.params.to_dict() == [
        {"name": "output", "type": "string", "default": "logits", "shape": None}
    ]


def _wait_until_serving(port: int, server: subprocess.Popen, log: Path, seconds: int) -> None:
    """Until the server answers /ping; its log's end if it stops or takes too long."""
    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return
        except OSError:
            assert server.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(trained, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    env.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)  # MLflow's default, as users serve
    # the serving command starts uvicorn from PATH, as in an activated virtual environment
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - the server writes to it
    server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(port, server, tmp_path / "serve.log", 120)
        x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": x.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
            predictions = np.array(json.loads(response.read())["predictions"])
        import ltexp

        with torch.no_grad():
            expected = ltexp.load_model(CHAMPION)(torch.from_numpy(x)).numpy()
        assert predictions.shape == (2, 10) and np.allclose(predictions, expected, atol=1e-4)
        # the named answer, as the README shows it
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": x.tolist(), "params": {"output": "classes"}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            named = json.loads(response.read())["predictions"]
        names = mlflow.models.get_model_info(CHAMPION).metadata["class_names"]
        assert [row["class_name"] for row in named] == [names[i] for i in expected.argmax(1)]
        assert all(0 < row["probability"] <= 1 for row in named)
        # a pixel that overflows the logits: a bad request, not "probability": NaN
        huge = x.copy()
        huge[0, 0, 0, 0] = 1e38
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": huge.tolist(), "params": {"output": "classes"}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 400
        assert b"beyond" in refused.value.read()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_logged_model_is_named_by_its_cell_with_params_and_linked_test_metrics(trained) -> None:
    _cfg, result, cell = trained
    client = mlflow.MlflowClient()
    model = client.get_logged_model(logged_model_id(result.model_uri))
    assert model.name == "tiny_cnn-bs-lt-s42"
    for key, value in {
        "dataset": "digits",
        "model": "tiny_cnn",
        "loss": "bs",
        "train_split": "lt",
        "seed": "42",
    }.items():
        assert model.params[key] == value
    evaluate = client.get_run(cell.evaluate_run_id)
    linked = {m.key: m for m in model.metrics if m.run_id == cell.evaluate_run_id}
    assert set(linked) == set(evaluate.data.metrics)
    for key, metric in linked.items():
        assert metric.value == evaluate.data.metrics[key]
        split = schema.TEST_METRIC_SPLIT[key]
        assert metric.dataset_name == f"digits/{split}"


def test_evaluate_run_lists_its_test_sets_with_the_prepared_digests(trained) -> None:
    _cfg, result, cell = trained
    client = mlflow.MlflowClient()
    evaluate = client.get_run(cell.evaluate_run_id)
    prepare = client.get_run(client.get_run(result.run_id).data.tags[schema.DATA_RUN])
    prepared = {
        {t.key: t.value for t in i.tags}[schema.INPUT_SPLIT]: i.dataset.digest
        for i in prepare.inputs.dataset_inputs
    }
    seen = {}
    for dataset_input in evaluate.inputs.dataset_inputs:
        tags = {t.key: t.value for t in dataset_input.tags}
        assert tags["mlflow.data.context"] == "test"
        seen[tags[schema.INPUT_SPLIT]] = dataset_input.dataset.digest
    assert seen == {s: prepared[s] for s in ("test_balanced", "test_lt")}
    assert [m.model_id for m in evaluate.inputs.model_inputs] == [logged_model_id(result.model_uri)]


def test_train_run_carries_its_checkpoint_s_headline_test_metrics(trained) -> None:
    _cfg, result, cell = trained
    client = mlflow.MlflowClient()
    train = client.get_run(result.run_id).data.metrics
    evaluate = client.get_run(cell.evaluate_run_id).data.metrics
    for name in schema.HEADLINE_TEST_METRICS:
        assert train[name] == evaluate[name]
    assert not {k for k in train if k.startswith("test_")} - set(schema.HEADLINE_TEST_METRICS)


@pytest.mark.parametrize(
    "uri,message",
    [
        (
            "models:/ltexp-digits-nope-ce-lt@champion",
            "no registered model 'ltexp-digits-nope-ce-lt' on sqlite:",
        ),
        ("models:/ltexp-digits-tiny_cnn-bs-lt@best", "has no alias 'best'; its versions: 1"),
        ("models:/ltexp-digits-tiny_cnn-bs-lt/7", "has no version 7; its versions: 1"),
        ("models:/other-project-model/1", "not registered by ltexp"),
    ],
)
def test_bad_model_uris_are_one_line_exit_2_and_leave_no_run(
    trained, uri: str, message: str, capsys: pytest.CaptureFixture
) -> None:
    if "other-project" in uri:  # a model that another tool registered, without ltexp's files
        with mlflow.start_run(run_name="not-ltexp"):
            mlflow.pytorch.log_model(
                torch.jit.script(torch.nn.Linear(2, 2)),  # TorchScript: no seconds of export
                name="m",
                registered_model_name="other-project-model",
                serialization_format="pickle",
                input_example=np.zeros((2, 2), np.float32),
            )
        capsys.readouterr()
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    assert main(["evaluate", "--model-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and uri in err[0], err
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == before and not [r for r in runs if r.info.status == "RUNNING"]


class _Constant(torch.nn.Module):
    """A planted program: every image is class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 10)
        out[:, 0] = 100.0
        return out


def test_ltexp_serve_never_runs_the_registry_s_torchscript_program(trained, tmp_path: Path) -> None:
    """Issue 39: a TorchScript program planted in a version (with the genuine weights, so its
    digests match) runs under pyfunc and `mlflow models serve`; `ltexp serve` rebuilds the model
    from the verified weights and ltexp's code, so what it serves is the genuine classifier."""
    from ltexp.tracking.registered_models import save_served_model

    client = mlflow.MlflowClient()
    genuine = client.get_model_version_by_alias("ltexp-digits-tiny_cnn-bs-lt", "champion")
    local = Path(mlflow.artifacts.download_artifacts(genuine.source, dst_path=str(tmp_path / "g")))
    program = next(local.rglob("model.pth"))
    torch.jit.save(torch.jit.script(_Constant()), str(program))
    mlflow.log_artifacts(str(local), artifact_path="planted", run_id=genuine.run_id)
    source = f"{client.get_run(genuine.run_id).info.artifact_uri}/planted"
    name = "ltexp-digits-planted-program"  # its own name: the shared store's others stay
    client.create_registered_model(name)
    planted = client.create_model_version(name, source=source, run_id=genuine.run_id)
    uri = f"models:/{name}/{planted.version}"
    x = np.random.default_rng(4).normal(size=(6, 3, 32, 32)).astype(np.float32)
    assert (np.asarray(mlflow.pyfunc.load_model(uri).predict(x)).argmax(1) == 0).all()  # planted
    info = save_served_model(uri, tmp_path / "served")
    served = np.asarray(mlflow.pyfunc.load_model(str(tmp_path / "served")).predict(x))
    with torch.no_grad():
        expected = ltexp.load_model(CHAMPION)(torch.from_numpy(x)).numpy()
    assert info.model == "tiny_cnn" and np.allclose(served, expected, atol=1e-5)
    classes = mlflow.pyfunc.load_model(str(tmp_path / "served")).predict(
        x, params={"output": "classes"}
    )
    assert classes["class_name"].tolist() == [info.class_names[i] for i in expected.argmax(1)]


@pytest.mark.slow
def test_ltexp_serve_answers_invocations_with_the_verified_model(trained, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    command = [sys.executable, "-m", "ltexp", "serve", "--model-uri", CHAMPION]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - the server writes to it
    server = subprocess.Popen(
        [*command, "--port", str(port)], env=env, cwd=tmp_path, stdout=log, stderr=log
    )
    try:
        _wait_until_serving(port, server, tmp_path / "serve.log", 180)
        x = np.random.default_rng(5).normal(size=(2, 3, 32, 32)).astype(np.float32)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": x.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = np.array(json.loads(response.read())["predictions"])
        with torch.no_grad():
            expected = ltexp.load_model(CHAMPION)(torch.from_numpy(x)).numpy()
        assert np.allclose(predictions, expected, atol=1e-4)
        assert "rebuilt from its verified weights" in (tmp_path / "serve.log").read_text()
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    # the server it started went with it: nothing answers on the port any more
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5)


def test_each_version_carries_a_model_card(trained) -> None:
    """Issue 42: a version's description said nothing; serving a real image meant reading the
    protocol and the data code. Now its card states the cell, the input contract and the test
    results with their intervals, and its tags the same for programs."""
    _cfg, result, cell = trained
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("ltexp-digits-tiny_cnn-bs-lt", "champion")
    card = version.description
    assert f"trained in run [{result.run_id}]" in card
    assert "**Input**: float32 `(N, 3, 32, 32)`" in card and "`(x − mean) / std`" in card
    assert "**Validation top-1**" in card and f"evaluate run [{cell.evaluate_run_id}]" in card
    assert version.tags["input_shape"] == "-1,3,32,32"
    mean = [float(v) for v in version.tags["input_mean"].split(",")]
    assert len(mean) == 3 and f"mean ({', '.join(f'{v:g}' for v in mean)})" in card
    tested = json.loads(version.tags["test_top1"])
    metrics = client.get_run(cell.evaluate_run_id).data.metrics
    value, low, high = tested["balanced"]
    assert value == pytest.approx(metrics["test_balanced_acc1"], abs=1e-6)
    assert (low, high) == pytest.approx(
        (metrics["test_balanced_acc1_ci_low"], metrics["test_balanced_acc1_ci_high"]), abs=1e-6
    )
    assert f"balanced {value:.4f} [{low:.4f}, {high:.4f}]" in card
    family = client.get_registered_model("ltexp-digits-tiny_cnn-bs-lt").description
    assert family.startswith("ltexp classifiers of digits") and "@champion" in family
