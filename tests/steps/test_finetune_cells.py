"""finetune, llrd, normalize and the recipe's options end to end: a cell that trains part of its
model is tracked, registered and loaded like any other, and is never the plain cell."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

import ltexp
from ltexp import cells, schema
from ltexp.config import build_config
from ltexp.data.pipeline import PROTOCOL_MEAN
from ltexp.study.run import run_cell
from ltexp.tracking import registered_models
from ltexp.training import resolve_train

DIGEST = "d" * 64


def test_a_lora_cell_registers_the_merged_model_and_loads_three_ways(tiny_config) -> None:
    cfg = tiny_config(model="cifar_resnet8", finetune="lora", llrd=0.8, lora_rank=4)
    cell = run_cell(cfg)
    run = mlflow.get_run(cell.train.run_id)
    p = run.data.params
    assert p["finetune"] == "lora" and p["lora_rank"] == "4" and p["llrd"] == "0.8"
    assert 0 < int(p[schema.TRAINABLE_PARAMS]) < int(p[schema.NUM_PARAMS]) / 2
    history = mlflow.MlflowClient().get_metric_history(cell.train.run_id, "trainable_params")
    assert [m.value for m in history] == [float(p[schema.TRAINABLE_PARAMS])] * 2
    assert run.info.run_name == "cifar_resnet8-ce-lt-s42-lora+lora_rank=4+llrd=0.8"
    uri = cell.train.model_uri
    assert uri.startswith("models:/ltexp-digits-cifar_resnet8-ce-lt-lora+lora_rank=4+llrd=0.8/")
    # the registered model is the plain architecture: LoRA merged, nothing of peft left
    trainable = ltexp.load_model(uri)
    assert not [k for k in trainable.state_dict() if "lora" in k or "base_layer" in k]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = trainable(x).numpy()
        scripted = mlflow.pytorch.load_model(uri)(x).numpy()
    served = mlflow.pyfunc.load_model(uri).predict(x.numpy())
    np.testing.assert_allclose(scripted, expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(served), expected, atol=1e-5)
    # evaluated like any cell, on the validation accuracy its training saw
    assert cell.evaluate_run_id
    assert mlflow.get_run(cell.evaluate_run_id).data.metrics["test_balanced_acc1"] > 0


def test_a_linear_probe_registers_a_backbone_identical_to_its_initialisation(tiny_config):
    cfg = tiny_config(finetune="linear", epochs=1, evaluate_after="false")
    cell = run_cell(cfg)
    model = ltexp.load_model(cell.train.model_uri)
    torch.manual_seed(cfg.train.seed)
    start = ltexp.models.build_model("tiny_cnn", model.fc.out_features, pretrained=False)
    for name, value in start.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(value, model.state_dict()[name]), name
    assert not torch.equal(start.fc.weight, model.fc.weight)


def test_the_plain_cell_keeps_its_identity_and_every_mode_is_another_cell() -> None:
    base = build_config("demo", {})
    plain = cells.identity(base, DIGEST)
    # options added after runs were recorded: at their default they are not in the identity,
    # so cells trained before them are still found (and never trained again)
    for key in ("finetune", "llrd", "normalize", "warmup_epochs", "label_smoothing"):
        assert key not in plain
    seen = {cells.identity_hash(plain)}
    for change in (
        {"finetune": "linear"},
        {"finetune": "freeze:1"},
        {"finetune": "freeze:2"},
        {"finetune": "gradual"},
        {"finetune": "gradual", "gradual_epochs": 2},
        {"finetune": "bitfit"},
        {"finetune": "lora"},
        {"finetune": "lora", "lora_rank": 4},
        {"llrd": 0.65},
        {"normalize": "weights"},
        {"warmup_epochs": 2},
        {"label_smoothing": 0.1},
    ):
        ident = cells.identity(base.replace(**change), DIGEST)
        assert cells.identity_hash(ident) not in seen, change
        seen.add(cells.identity_hash(ident))
    names = {
        "freeze:2": "tiny_cnn-ce-lt-s42-freeze2",
        "lora": "tiny_cnn-ce-lt-s42-lora",
        "bitfit": "tiny_cnn-ce-lt-s42-bitfit",
    }
    for value, name in names.items():
        assert cells.run_name(cells.identity(base.replace(finetune=value), DIGEST)) == name
    weights = cells.identity(base.replace(normalize="weights"), DIGEST)
    assert cells.variant(weights) == "norm_weights"
    # an option of another mode changes nothing that is trained: the same cell, the same name
    for idle in ({"lora_rank": 4}, {"lora_alpha": 4.0}, {"gradual_epochs": 3}):
        assert cells.identity(base.replace(**idle), DIGEST) == plain, idle
    linear = cells.identity(base.replace(finetune="linear"), DIGEST)
    assert cells.identity(base.replace(finetune="linear", lora_rank=2), DIGEST) == linear


def test_normalize_weights_takes_the_weights_own_statistics() -> None:
    cfg = build_config("thesis", {"model": "resnet50", "normalize": "weights", "device": "cpu"})
    spec = resolve_train(cfg)
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert spec.std == pytest.approx((0.229, 0.224, 0.225))
    vit = resolve_train(cfg.replace(model="vit_b16"))
    assert vit.mean == (0.5, 0.5, 0.5) and vit.std == (0.5, 0.5, 0.5)
    assert resolve_train(cfg.replace(normalize="cifar")).mean == PROTOCOL_MEAN


def test_a_normalize_weights_cell_registers_and_evaluates_with_its_statistics(tiny_config):
    cfg = tiny_config(
        model="timm:resnet10t", image_size=32, normalize="weights", epochs=1, batch_size=64
    )
    cell = run_cell(cfg)
    model_dir = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=cell.train.model_uri + "/extra_files")
    )
    info = registered_models.read_model_info(
        model_dir / registered_models.MODEL_INFO_FILE, cell.train.model_uri
    )
    assert info.mean == pytest.approx((0.485, 0.456, 0.406))
    assert cell.evaluate_run_id
    assert cells.variant(cells.identity(cfg, DIGEST)) == "norm_weights"
