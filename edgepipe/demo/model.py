"""The demo CNN: small enough to train in a minute, shaped to exercise every pipeline stage.

Each layer is here because some stage must handle it: the padded stem conv + BatchNorm tests the
BN fold and the input-normalization fold at image borders (padding=1), hardswish and the
depthwise/pointwise pair test the backends' activation and grouped-conv lowering, the residual
Add tests requantization of two differently scaled inputs, max and average pooling, global
average pooling and the Linear head cover the classifier tail.
"""

from __future__ import annotations

import importlib.resources

import torch
from torch import nn

NUM_CLASSES = 10
WEIGHTS_FILE = "demo_cnn.pt"


def _conv_bn(in_ch: int, out_ch: int, kernel: int = 3, groups: int = 1) -> list[nn.Module]:
    """Conv without bias followed by BatchNorm: the pattern the BN fold rewrites."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_ch)]


class DepthwiseResidualBlock(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 with a skip connection (MobileNet-style inverted block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.Sequential(*_conv_bn(channels, channels, 3, groups=channels), nn.ReLU())
        self.pointwise = nn.Sequential(*_conv_bn(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.pointwise(self.depthwise(x)))


class DemoNet(nn.Module):
    """3x32x32 normalized RGB -> 10 logits; about 22k parameters."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 16), nn.ReLU(), nn.MaxPool2d(2))  # 16x16
        self.expand = nn.Sequential(*_conv_bn(16, 32), nn.Hardswish())
        self.block = DepthwiseResidualBlock(32)
        self.pool = nn.AvgPool2d(2)  # 8x8
        self.head_conv = nn.Sequential(*_conv_bn(32, 48), nn.ReLU())
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(48, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(self.expand(self.stem(image))))
        x = self.global_pool(self.head_conv(x))
        return self.classifier(torch.flatten(x, 1))


def build_demo() -> DemoNet:
    """The trained demo model in eval mode (weights from the package file, weights_only load)."""
    model = DemoNet()
    weights = importlib.resources.files("edgepipe.demo") / WEIGHTS_FILE
    with importlib.resources.as_file(weights) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def make_outlier_heavy(model: DemoNet, factor: float = 100.0) -> DemoNet:
    """Same FP32 function, but two post-ReLU channels scaled by `factor` (undone by the consumer).

    Plain per-tensor int8 then loses most of the accuracy: an honest test case for sensitivity
    analysis and mixed precision (used by benchmarks/accuracy_recovery.py and the tests).
    """
    import torch

    with torch.no_grad():
        for bn, consumer in ((model.block.depthwise[1], model.block.pointwise[0]),
                             (model.head_conv[1], model.classifier)):
            bn.weight[0] *= factor
            bn.bias[0] *= factor
            consumer.weight[:, 0] /= factor
    return model
