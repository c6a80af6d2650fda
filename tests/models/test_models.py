"""Every registered backbone builds offline, has the published size, and loads weights safely."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest
import torch

from ltexp.errors import ConfigError, WeightsError
from ltexp.models import MODELS, CosineClassifier, build_model, count_parameters, model_spec

# Published parameter counts with the original 1000-class ImageNet head (torchvision's model
# docs; timm's model card for vit_base_patch16_224), and the head's input width.
PUBLISHED = {
    "resnet50": (25_557_032, 2048),
    "mobilenet_v2": (3_504_872, 1280),
    "convnext_base": (88_591_464, 1024),
    "vit_b16": (86_567_656, 768),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_builds_without_network_and_gives_logits(name: str) -> None:
    model = build_model(name, 100, pretrained=False).eval()
    size = MODELS[name].input_size
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 100)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_count_matches_published_architecture(name: str) -> None:
    published, width = PUBLISHED[name]
    expected = published - (width * 1000 + 1000) + (width * 100 + 100)
    assert count_parameters(build_model(name, 100, pretrained=False)) == expected


def test_every_layer_is_trainable() -> None:
    model = build_model("mobilenet_v2", 10, pretrained=False)
    assert all(p.requires_grad for p in model.parameters())


def test_cosine_head_gives_cosines() -> None:
    model = build_model("tiny_cnn", 10, pretrained=False, head="cosine").eval()
    assert isinstance(model.fc, CosineClassifier)
    with torch.no_grad():
        out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10) and out.abs().max() <= 1 + 1e-6
    assert torch.allclose(model.fc.weight.norm(dim=1), torch.ones(10), atol=1e-5)


def test_timm_prefix_builds_any_timm_model() -> None:
    model = build_model("timm:resnet18", 7, pretrained=False).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    with pytest.raises(ConfigError, match="unknown timm model"):
        model_spec("timm:not_a_model")


def test_unknown_model_and_head() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet5'.*resnet50"):
        build_model("resnet5", 10)
    with pytest.raises(ConfigError, match="unknown head 'cos'"):
        build_model("tiny_cnn", 10, pretrained=False, head="cos")


def test_offline_torchvision_weights_error_names_cache_and_ways_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import torch.hub

    def offline(*a, **k):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as err:
        build_model("resnet50", 100, pretrained=True)
    msg = str(err.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    assert "resnet50-11ad3fa6.pth" in msg
    assert "pretrained=false" in msg and "local state dict" in msg


def test_offline_timm_weights_error_names_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsError) as err:
        build_model("vit_b16", 100, pretrained=True)
    msg = str(err.value)
    assert "Hugging Face cache" in msg and "vit_base_patch16_224.augreg2_in21k_ft_in1k" in msg
    assert "pretrained=false" in msg


def test_an_unreachable_hub_is_said_at_once_without_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """The issue's `-e train -P model=vit_b16` offline: a minute of Hugging Face retry warnings
    before the clear line. One probe of the hub now decides, and the line says why."""
    import huggingface_hub.constants as hc

    from ltexp import resources

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)  # as a user's shell has it
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    probed: list[str] = []
    monkeypatch.setattr(resources, "reachable", lambda url: probed.append(url) or False)
    with pytest.raises(WeightsError, match=r"huggingface\.co is not reachable"):
        build_model("vit_b16", 100, pretrained=True)
    assert probed == [hc.ENDPOINT] and hc.HF_HUB_OFFLINE is True
    assert "Retrying" not in capfd.readouterr().err


def test_reachable_is_a_tcp_connection() -> None:
    from ltexp.resources import reachable

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert reachable(f"http://127.0.0.1:{port}")
    assert not reachable(f"http://127.0.0.1:{port}", timeout=1)  # closed now


def test_local_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_model("cifar_resnet20", 10, pretrained=False)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    loaded = build_model("cifar_resnet20", 5, pretrained=str(path))
    body = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    for k, v in body.items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert loaded.fc.out_features == 5  # a fresh head of the new size


def test_local_safetensors_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = build_model("tiny_cnn", 10, pretrained=False)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors"
    )
    loaded = build_model("tiny_cnn", 10, pretrained=str(tmp_path / "w.safetensors"))
    assert torch.equal(loaded.features[0][0].weight, source.features[0][0].weight)


def test_weights_pickle_carrying_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(WeightsError, match="refused"):
        build_model("tiny_cnn", 10, pretrained=str(path))
    assert not marker.exists()


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    torch.save(build_model("tiny_cnn", 10, pretrained=False).state_dict(), tmp_path / "w.pt")
    with pytest.raises(WeightsError, match="does not fit"):
        build_model("cifar_resnet20", 10, pretrained=str(tmp_path / "w.pt"))
