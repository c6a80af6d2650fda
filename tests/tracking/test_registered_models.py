"""Every SPEC backbone round-trips through the Model Registry in the safe pt2 format."""

from __future__ import annotations

import mlflow
import pytest
import torch

from ltexp.models import build_model
from ltexp.tracking.registered_models import ModelInfo, load_classifier, log_and_register


@pytest.mark.parametrize(
    "name,head",
    [
        ("resnet50", "linear"),
        ("mobilenet_v2", "linear"),
        # full-size ConvNeXt-B and ViT-B/16 exports take ~20 s each on a 2-core CPU
        pytest.param("convnext_base", "cosine", marks=pytest.mark.slow),
        pytest.param("vit_b16", "linear", marks=pytest.mark.slow),
    ],
)
def test_backbone_registers_and_loads_with_any_batch_size(
    name: str, head: str, tracking: str
) -> None:
    torch.manual_seed(0)
    model = build_model(name, 100, pretrained=False, head=head).eval()
    info = ModelInfo(name, 100, head, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with mlflow.start_run():
        uri = log_and_register(model, info, f"test-{name}", {"val_acc1": "0.5"})
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        graph = mlflow.pytorch.load_model(uri)  # the pt2 graph: no pickled Python
        assert torch.allclose(graph(x), expected, atol=1e-4)
        rebuilt, loaded_info = load_classifier(uri, torch.device("cpu"))  # from safetensors
        assert loaded_info == info
        assert torch.allclose(rebuilt(x), expected, atol=1e-5)
