"""Pretrained weights found where the libraries cache them, offline and without a probe of the
network; the loaded parameters are the file's; a broken cache file is one line naming it and
saying to delete it (issue 41). The files are written by ltexp.rehearsal with the architectures'
own keys and shapes and random values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ltexp import resources
from ltexp.errors import WeightsError
from ltexp.models import build_model, model_spec
from ltexp.rehearsal import weights_cache_path, write_weights_cache


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The libraries' caches under ``tmp_path``, and no network to probe."""
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)  # restored after

    def no_probe(url: str, *args, **kwargs) -> bool:
        raise AssertionError(f"the network was probed ({url}) though the weights are cached")

    monkeypatch.setattr(resources, "reachable", no_probe)
    return tmp_path


def _loaded_equal_the_file(model: str, path: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path)
    built = build_model(model, 100, pretrained=True)
    classifier = model_spec(model).classifier
    compared = 0
    for name, value in built.state_dict().items():
        if name.startswith(classifier):  # replaced by a 100-way head
            continue
        assert torch.equal(value, saved[name]), name
        compared += 1
    assert compared > 10
    fresh = build_model(model, 100, pretrained=False)
    assert not all(
        torch.equal(a, b)
        for (n, a), b in zip(fresh.state_dict().items(), built.state_dict().values(), strict=True)
        if not n.startswith(classifier) and a.dtype.is_floating_point
    )  # not a fresh initialisation


def test_torchvision_weights_load_from_torch_hub_s_cache(caches: Path) -> None:
    path = write_weights_cache("mobilenet_v2", seed=1)
    assert path == caches / "torch" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    _loaded_equal_the_file("mobilenet_v2", path)


@pytest.mark.slow
def test_timm_weights_load_from_the_hugging_face_cache(caches: Path) -> None:
    path = write_weights_cache("vit_b16", seed=1)
    parts = path.relative_to(caches / "hf" / "hub").parts
    assert parts[0] == "models--timm--vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert parts[1:3] == ("snapshots", "0" * 40) and parts[3] == "model.safetensors"
    assert (path.parents[2] / "refs" / "main").read_text() == "0" * 40
    _loaded_equal_the_file("vit_b16", path)


@pytest.mark.parametrize("broken", ["another architecture", "truncated", "not a state dict"])
def test_a_broken_cache_file_is_one_line_naming_it(caches: Path, broken: str) -> None:
    path = weights_cache_path("mobilenet_v2")
    path.parent.mkdir(parents=True, exist_ok=True)
    if broken == "another architecture":
        torch.save(build_model("tiny_cnn", 10, pretrained=False).state_dict(), path)
    elif broken == "truncated":
        write_weights_cache("mobilenet_v2")
        path.write_bytes(path.read_bytes()[:100_000])
    else:
        path.write_text("a text file where weights should be")
    with pytest.raises(WeightsError) as err:
        build_model("mobilenet_v2", 100, pretrained=True)
    message = str(err.value)
    assert f"cached weights '{path}'" in message and "delete the file" in message
    assert "\n" not in message
