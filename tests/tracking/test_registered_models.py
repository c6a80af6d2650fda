"""Every backbone round-trips through the Model Registry: MLflow's loader (TorchScript), pyfunc,
and ltexp's safetensors rebuild give the same logits; the champion moves only on a better score."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from ltexp import schema
from ltexp.models import build_model
from ltexp.tracking.registered_models import (
    ModelInfo,
    load_classifier,
    load_model,
    log_and_register,
    update_champion,
)


@pytest.mark.parametrize(
    "name,head",
    [
        ("resnet50", "linear"),
        ("mobilenet_v2", "cosine"),
        # full-size ConvNeXt-B and ViT-B/16 take ~10 s each on a 2-core CPU
        pytest.param("convnext_base", "linear", marks=pytest.mark.slow),
        pytest.param("vit_b16", "linear", marks=pytest.mark.slow),
    ],
)
def test_backbone_registers_and_loads_three_ways(
    name: str, head: str, tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow 3.17's default
    torch.manual_seed(0)
    model = build_model(name, 100, pretrained=False, head=head).eval()
    info = ModelInfo(name, 100, head, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with mlflow.start_run():
        uri = log_and_register(
            model, info, f"test-{name}", {"val_acc1": "0.5"}, logged_name=f"{name}-cell"
        )
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        scripted = mlflow.pytorch.load_model(uri)
        scripted.eval()
        assert torch.allclose(scripted.to("cpu")(x), expected, atol=1e-4)
        rebuilt, loaded_info = load_classifier(uri, torch.device("cpu"))
        assert loaded_info == info
        assert torch.allclose(rebuilt(x), expected, atol=1e-5)
    served = mlflow.pyfunc.load_model(uri).predict(x.numpy())
    assert np.allclose(served, expected.numpy(), atol=1e-4)
    # a user who refuses every pickle: MLflow's loader refuses the version, ltexp's loads it
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(mlflow.exceptions.MlflowException, match="pickle is disallowed"):
        mlflow.pytorch.load_model(uri)
    trainable = load_model(uri)
    assert isinstance(trainable, torch.nn.Module) and all(
        p.requires_grad for p in trainable.parameters()
    )
    with torch.no_grad():
        assert torch.allclose(trainable(x), expected, atol=1e-5)


def test_champion_moves_only_to_a_strictly_better_version(tracking: str) -> None:
    info = ModelInfo("tiny_cnn", 3, "linear", 32, (0.5,) * 3, (0.5,) * 3)
    model = build_model("tiny_cnn", 3, pretrained=False)
    client = mlflow.MlflowClient()

    def register(val_acc1: str) -> str:
        with mlflow.start_run():
            log_and_register(model, info, "m", {"val_acc1": val_acc1}, logged_name="cell")
        return update_champion("m")

    assert register("0.5") == "1"
    assert register("0.5") == "1"  # a tie keeps the champion
    assert register("0.4") == "1"
    assert register("0.6") == "4"
    client.delete_registered_model_alias("m", schema.CHAMPION_ALIAS)
    assert update_champion("m") == "4"
