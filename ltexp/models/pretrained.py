"""The ImageNet-pretrained backbones of the protocol (docs/protocol.md), and any timm model as
``timm:<name>``.

Weights come from the libraries' own download and cache (torch hub for torchvision, the Hugging
Face hub for timm). Offline without cached weights, building fails with one line naming the cache
folder, the file expected, and the ways out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ltexp import resources
from ltexp.errors import OFFLINE_ALTERNATIVE, ConfigError, WeightsError
from ltexp.models.registry import ModelSpec, register_model, register_prefix

_WAYS_OUT = (
    "pre-download them on a networked machine (the same command with network access "
    f"fills the cache) and copy the file there, or use pretrained=false, or "
    f"pretrained=<path to a local state dict>; {OFFLINE_ALTERNATIVE}"
)


# timm (1.3 s) and torchvision.models (1.0 s; python -X importtime, after torch) are imported
# where a backbone is built: the small CPU models and a plan need neither.


def _torchvision(builder_name: str, weights_name: str) -> Callable[[bool], nn.Module]:
    def create(pretrained: bool) -> nn.Module:
        import torchvision.models as tvm

        builder = getattr(tvm, builder_name)
        if not pretrained:
            return builder(weights=None)
        weights = tvm.get_weight(weights_name)
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        expected = cache / Path(weights.url).name
        if not expected.is_file() and not resources.reachable(weights.url):
            host = "/".join(weights.url.split("/")[:3])
            raise WeightsError(
                f"pretrained weights {weights_name} are not in the cache {str(cache)!r} "
                f"(expected {expected.name}) and {host} is not reachable; {_WAYS_OUT}"
            )
        try:
            return builder(weights=weights)
        except Exception as e:  # noqa: BLE001 - turned into one clear line below
            if expected.is_file():
                raise WeightsError(
                    f"cached weights {str(expected)!r} for {weights_name} could "
                    f"not be loaded ({_first_line(e)}); delete the file to "
                    f"download it again"
                ) from None
            raise WeightsError(
                f"pretrained weights {weights_name} are not in the cache "
                f"{str(cache)!r} (expected {expected.name}) and could not be "
                f"downloaded ({_first_line(e)}); {_WAYS_OUT}"
            ) from None

    return create


def _timm(model_name: str) -> Callable[[bool], nn.Module]:
    def create(pretrained: bool) -> nn.Module:
        import timm

        if not pretrained:
            return timm.create_model(model_name, pretrained=False)
        from huggingface_hub import constants, try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(model_name)
        hub_id = getattr(cfg, "hf_hub_id", None) or model_name
        cached = try_to_load_from_cache(hub_id, "model.safetensors")
        cached = cached if isinstance(cached, str) else None
        # weights in the cache load without asking the network; else one probe instead of the
        # hub client's minute of retries and warnings
        unreachable = (
            not cached
            and not constants.HF_HUB_OFFLINE
            and not resources.reachable(constants.ENDPOINT)
        )
        if cached or unreachable:
            constants.HF_HUB_OFFLINE = True
        try:
            return timm.create_model(model_name, pretrained=True)
        except Exception as e:  # noqa: BLE001 - turned into one clear line below
            if cached:
                raise WeightsError(
                    f"cached weights {cached!r} for {model_name} could not be loaded "
                    f"({_first_line(e)}); delete the file to download it again"
                ) from None
            reason = f"{constants.ENDPOINT} is not reachable" if unreachable else _first_line(e)
            folder = "models--" + hub_id.replace("/", "--")
            raise WeightsError(
                f"pretrained weights of timm model {model_name} are not in the "
                f"Hugging Face cache {constants.HF_HUB_CACHE!r} (expected "
                f"{folder}/snapshots/<rev>/model.safetensors) and could not be "
                f"downloaded ({reason}); {_WAYS_OUT}"
            ) from None

    return create


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _torchvision_top1(weights_name: str) -> Callable[[], float | None]:
    """ImageNet-1K top-1 (%) that torchvision publishes with the weights (no download)."""

    def top1() -> float | None:
        import torchvision.models as tvm

        metrics = tvm.get_weight(weights_name).meta.get("_metrics", {})
        return metrics.get("ImageNet-1K", {}).get("acc@1")

    return top1


def _torchvision_normalization(weights_name: str) -> Callable[[], tuple[tuple, tuple]]:
    """The mean and std of the weights' own preprocessing (torchvision's metadata, no download)."""

    def stats() -> tuple[tuple, tuple]:
        import torchvision.models as tvm

        preset = tvm.get_weight(weights_name).transforms()
        return tuple(preset.mean), tuple(preset.std)

    return stats


def _timm_normalization(model_name: str) -> Callable[[], tuple[tuple, tuple]]:
    """The mean and std of a timm model's pretrained config (no download)."""

    def stats() -> tuple[tuple, tuple]:
        import timm

        cfg = timm.models.get_pretrained_cfg(model_name)
        return tuple(cfg.mean), tuple(cfg.std)

    return stats


def _torchvision_spec(
    name: str,
    builder: str,
    weights: str,
    classifier: str,
    title: str,
    stages: tuple[tuple[str, ...], ...],
):
    return ModelSpec(
        name,
        _torchvision(builder, weights),
        classifier,
        224,
        "torchvision",
        weights,
        display_name=title,
        kind="CNN",
        pretraining="ImageNet-1K",
        imagenet_top1=_torchvision_top1(weights),
        stages=stages,
        normalization=_torchvision_normalization(weights),
    )


# Stages, bottom to top (finetune=freeze:<k>, gradual, llrd): the stem, then each group of
# blocks at one resolution (ResNet's layer1-4; MobileNetV2's seven bottleneck sequences of its
# Table 2 and its last 1x1 convolution; ConvNeXt's four stages, each with the downsampling
# layer before it); a ViT's patch embedding with its class token and position embedding, then
# each of its 12 blocks (BEiT's layer ids).
_RESNET50_STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))
_MOBILENET_V2_STAGES = tuple(
    tuple(f"features.{i}" for i in blocks)
    for blocks in (
        (0,),
        (1,),
        (2, 3),
        (4, 5, 6),
        (7, 8, 9, 10),
        (11, 12, 13),
        (14, 15, 16),
        (17,),
        (18,),
    )
)
_CONVNEXT_STAGES = (
    ("features.0",),
    ("features.1",),
    ("features.2", "features.3"),
    ("features.4", "features.5"),
    ("features.6", "features.7"),
)
_VIT_STAGES = (("cls_token", "pos_embed", "patch_embed"), *((f"blocks.{i}",) for i in range(12)))

register_model(
    _torchvision_spec(
        "resnet50",
        "resnet50",
        "ResNet50_Weights.IMAGENET1K_V2",
        "fc",
        "ResNet-50",
        _RESNET50_STAGES,
    )
)
register_model(
    _torchvision_spec(
        "mobilenet_v2",
        "mobilenet_v2",
        "MobileNet_V2_Weights.IMAGENET1K_V1",
        "classifier.1",
        "MobileNetV2",
        _MOBILENET_V2_STAGES,
    )
)
register_model(
    _torchvision_spec(
        "convnext_base",
        "convnext_base",
        "ConvNeXt_Base_Weights.DEFAULT",
        "classifier.2",
        "ConvNeXt-Base",
        _CONVNEXT_STAGES,
    )
)
# timm's default tag of vit_base_patch16_224: ImageNet-21k pretrained, ImageNet-1k fine-tuned.
# timm publishes no top-1 in the model's metadata (the thesis gives none either).
register_model(
    ModelSpec(
        "vit_b16",
        _timm("vit_base_patch16_224.augreg2_in21k_ft_in1k"),
        "head",
        224,
        "timm",
        "vit_base_patch16_224.augreg2_in21k_ft_in1k",
        fixed_input_size=True,
        display_name="ViT-B/16",
        kind="ViT",
        pretraining="ImageNet-21K, fine-tuned on ImageNet-1K",
        stages=_VIT_STAGES,
        # LoRA on the attention projections, as Hu et al. (2022) adapt W_q and W_v (timm fuses
        # q, k and v into one qkv layer)
        lora_targets=r"blocks\.\d+\.attn\.qkv",
        normalization=_timm_normalization("vit_base_patch16_224.augreg2_in21k_ft_in1k"),
    )
)


def timm_spec(name: str) -> ModelSpec:
    """A spec for ``timm:<model name>`` (any model ``timm.create_model`` knows)."""
    import timm

    model_name = name.removeprefix("timm:")
    if not model_name or not timm.is_model(model_name):
        raise ConfigError(f"unknown timm model {model_name!r}; see timm.list_models() for names")
    cfg: Any = timm.models.get_pretrained_cfg(model_name)
    classifier = getattr(cfg, "classifier", None) or "head"
    input_size = int((getattr(cfg, "input_size", None) or (3, 224, 224))[-1])
    return ModelSpec(
        name,
        _timm(model_name),
        classifier,
        input_size,
        "timm",
        model_name,
        fixed_input_size=bool(getattr(cfg, "fixed_input_size", False)),
        kind="ViT" if model_name.startswith(("vit", "deit", "eva", "beit")) else "CNN",
        pretraining=f"timm weights {getattr(cfg, 'tag', '') or 'default'}",
        normalization=_timm_normalization(model_name),
    )


register_prefix("timm:", timm_spec)
