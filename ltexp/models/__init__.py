"""Backbones behind one registry: ``build_model(name, num_classes, pretrained, head)``.

Registered: the four pretrained backbones of the protocol (docs/protocol.md): ``resnet50``,
``mobilenet_v2``, ``convnext_base`` from torchvision; ``vit_b16`` from timm, small from-scratch
models for the demo and tests (``cifar_resnet20``, ``tiny_cnn``), and ``timm:<name>`` for any timm
model.
"""

from ltexp.discover import import_submodules
from ltexp.models.heads import CosineClassifier
from ltexp.models.registry import (
    HEADS,
    MODELS,
    ModelSpec,
    build_model,
    count_parameters,
    input_size,
    list_models,
    model_spec,
    register_model,
    register_prefix,
)

# Registration happens on import: every module of this package (a backbone family is one module).
import_submodules(__name__, __path__, skip=("heads", "registry"))

__all__ = [
    "HEADS",
    "MODELS",
    "CosineClassifier",
    "ModelSpec",
    "build_model",
    "count_parameters",
    "input_size",
    "list_models",
    "model_spec",
    "register_model",
    "register_prefix",
]
