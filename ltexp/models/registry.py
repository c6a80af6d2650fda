"""The model registry and ``build_model``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ltexp.errors import ConfigError, WeightsError, unknown_name_error
from ltexp.models.heads import make_head


@dataclass(frozen=True)
class ModelSpec:
    """A registered backbone.

    Attributes:
        name: registry name.
        create: ``create(pretrained: bool) -> nn.Module`` with its original classifier.
        classifier: dotted path of the final linear layer that ltexp replaces.
        input_size: the image side the model expects (224 for ImageNet backbones).
        source: where it comes from, for the docs and the run params.
        weights: which pretrained weights ``pretrained=True`` loads.
        fixed_input_size: the model only accepts ``input_size`` (a ViT's position embeddings).
        display_name: how the report names it (``ResNet-50``).
        kind: ``CNN`` or ``ViT`` (the report's Table 3.3).
        pretraining: what ``weights`` were trained on (``ImageNet-1K``; ``none`` from scratch).
        imagenet_top1: ImageNet-1K top-1 (%) of ``weights`` from the library's own metadata, or
            None where the library publishes none.
        stages: the backbone's stages, bottom to top, each the dotted names of the modules (or
            parameters) it holds: what ``finetune=freeze:<k>``, ``gradual`` and ``llrd`` count
            in (:mod:`ltexp.models.finetune`; empty: its generic rule).
        lora_targets: a regular expression of the module names LoRA adapts (empty: every
            ``Linear`` and ungrouped ``Conv2d`` of the stages).
        normalization: the mean and std the pretrained weights were trained with, read from the
            library's metadata (``normalize=weights``); None for a model without weights.
    """

    name: str
    create: Callable[[bool], nn.Module]
    classifier: str
    input_size: int
    source: str
    weights: str
    fixed_input_size: bool = False
    display_name: str = ""
    kind: str = "CNN"
    pretraining: str = "none (trained from scratch)"
    imagenet_top1: Callable[[], float | None] = lambda: None
    stages: tuple[tuple[str, ...], ...] = ()
    lora_targets: str = ""
    normalization: Callable[[], tuple[tuple[float, ...], tuple[float, ...]]] | None = None

    @property
    def title(self) -> str:
        """The display name, or the registry name."""
        return self.display_name or self.name


MODELS: dict[str, ModelSpec] = {}
# Families of names resolved on demand (``timm:<name>`` → a spec for that timm model).
PREFIXES: dict[str, Callable[[str], ModelSpec]] = {}
HEADS = ("linear", "cosine")


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (names are unique)."""
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def register_prefix(prefix: str, resolve: Callable[[str], ModelSpec]) -> None:
    """Resolve every name starting with ``prefix`` (e.g. ``timm:``) with ``resolve(name)``."""
    PREFIXES[prefix] = resolve


def list_models() -> list[str]:
    """Registered model names (``<prefix><name>`` forms such as ``timm:<name>`` work too)."""
    return list(MODELS)


def model_spec(name: str) -> ModelSpec:
    """The spec of ``name``: a registered model, or a name of a registered prefix."""
    if name in MODELS:
        return MODELS[name]
    for prefix, resolve in PREFIXES.items():
        if name.startswith(prefix):
            return resolve(name)
    raise unknown_name_error("model", name, [*MODELS, *(f"{p}<name>" for p in PREFIXES)])


def input_size(name: str, configured: int | None = None) -> int:
    """The image side a cell trains at: the configured one, else the model's own."""
    return configured or model_spec(name).input_size


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def build_model(
    name: str, num_classes: int, pretrained: bool | str | Path = True, head: str = "linear"
) -> nn.Module:
    """Build a backbone with a fresh ``num_classes`` head; every layer stays trainable.

    Args:
        name: a registered model or ``timm:<name>``.
        num_classes: outputs of the new head.
        pretrained: True: the library's weights (downloaded to its cache on first use);
            False: random init; a path: a local state dict (``.pt``/``.pth`` loaded with
            ``weights_only=True``, or ``.safetensors``), keys of the original classifier ignored.
        head: ``linear`` or ``cosine`` (:class:`~ltexp.models.heads.CosineClassifier`).

    Raises:
        ConfigError: unknown name or head, ``num_classes < 2``.
        WeightsError: weights not cached and not downloadable, or a weights file refused.
    """
    if head not in HEADS:
        raise unknown_name_error("head", head, HEADS)
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
    spec = model_spec(name)
    local_weights = None
    if isinstance(pretrained, str | Path) and not isinstance(pretrained, bool):
        local_weights = Path(pretrained).expanduser()
        pretrained = False
    model = spec.create(bool(pretrained))
    if local_weights is not None:
        load_local_weights(model, local_weights, spec.classifier)
    old = _get_module(model, spec.classifier)
    in_features = getattr(old, "in_features", None)
    if in_features is None:
        raise ValueError(f"{name}: {spec.classifier} is not a linear layer")  # pragma: no cover
    _set_module(model, spec.classifier, make_head(head, in_features, num_classes))
    return model


def load_local_weights(model: nn.Module, path: Path, classifier: str) -> None:
    """Load a local state dict into ``model``, ignoring the classifier's keys.

    Only tensors are read (``weights_only=True`` or safetensors): a file that carries code is
    refused, never run.
    """
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read means the file is unusable
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"weights file {str(path)!r} is not a plain state dict of tensors "
            f"and was refused: {first}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    prefix = classifier + "."
    state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    own = {k for k in model.state_dict() if not k.startswith(prefix)}
    missing, unexpected = sorted(own - state.keys()), sorted(state.keys() - own)
    if missing or unexpected:
        raise WeightsError(
            f"weights file {str(path)!r} does not fit this model: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise WeightsError(
            f"weights file {str(path)!r} does not fit this model: {str(e).splitlines()[0]}"
        ) from None


def _get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)
