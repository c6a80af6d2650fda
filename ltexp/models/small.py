"""Small models trained from scratch: the embedded demo and the tests run on a CPU in seconds."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ltexp.errors import WeightsError
from ltexp.models.registry import ModelSpec, register_model


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU blocks and a linear head (~0.1M parameters) for 32×32 inputs."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(3, width),
            nn.MaxPool2d(2),
            block(width, 2 * width),
            nn.MaxPool2d(2),
            block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of He et al. (2016, Sec. 4.2): 6n+2 layers, widths 16/32/64.

    ResNet-20 (n = 3, 0.27M parameters) is also the CIFAR-LT backbone family of Cao et al. (2019).
    (Projection shortcuts where the shape changes, instead of the paper's zero padding.)
    """

    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _from_scratch(factory: Callable[[], nn.Module]) -> Callable[[bool], nn.Module]:
    def create(pretrained: bool) -> nn.Module:
        if pretrained:
            raise WeightsError(
                "the small ltexp models have no pretrained weights; use "
                "pretrained=false or a local weights file"
            )
        return factory()

    return create


register_model(
    ModelSpec(
        "tiny_cnn",
        _from_scratch(TinyCNN),
        "fc",
        32,
        "ltexp",
        "none",
        display_name="Tiny CNN",
        stages=(("features.0",), ("features.2",), ("features.4",)),  # its three conv blocks
    )
)
for _depth in (8, 20, 32):  # variants are data: ResNet-8/20/32 of He et al. (2016)
    register_model(
        ModelSpec(
            f"cifar_resnet{_depth}",
            _from_scratch(functools.partial(CifarResNet, _depth)),
            "fc",
            32,
            "ltexp",
            "none",
            display_name=f"ResNet-{_depth} (CIFAR)",
            # the stem, then He et al.'s three stages of n blocks (16, 32, 64 channels)
            stages=(
                ("conv1", "bn1"),
                *(
                    tuple(f"layers.{i}" for i in range(s * _n, (s + 1) * _n))
                    for s in range(3)
                    for _n in [(_depth - 2) // 6]
                ),
            ),
        )
    )
