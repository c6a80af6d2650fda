"""Backbones behind one registry: ``build_model(name, num_classes, pretrained, head)``.

Registered: the four pretrained backbones of SPEC.md (``resnet50``, ``mobilenet_v2``,
``convnext_base`` from torchvision; ``vit_b16`` from timm), small from-scratch models for the demo
and tests (``cifar_resnet20``, ``tiny_cnn``), and ``timm:<name>`` for any timm model.
"""

from ltexp.models.heads import CosineClassifier
from ltexp.models.registry import (
    MODELS,
    ModelSpec,
    build_model,
    count_parameters,
    list_models,
    model_spec,
    register_model,
)

# Registration happens on import.
from ltexp.models import pretrained as _pretrained  # noqa: F401  isort: skip
from ltexp.models import small as _small  # noqa: F401  isort: skip

__all__ = [
    "MODELS",
    "CosineClassifier",
    "ModelSpec",
    "build_model",
    "count_parameters",
    "list_models",
    "model_spec",
    "register_model",
]
