"""Small timm-style architectures as `module:factory` models, initialised the way timm does.

Why not `timm` itself: every `import timm` imports torchvision (through `timm.data`), and no
torchvision from PyPI imports with the torch we pin, so timm cannot be imported here. These
classes repeat timm 1.0.31's blocks (`timm/models/resnet.py` BasicBlock / Bottleneck with
`zero_init_last`, `_efficientnet_blocks.py` InvertedResidual + SqueezeExcite with a hard-sigmoid
gate, `convnext.py` Block with LayerNorm and layer scale, `layers/attention.py` Attention on the
non-fused path, `layers/mlp.py` Mlp with exact GELU), at toy widths. What matters for the
converter is what a freshly created timm model contains: last BatchNorm gamma of every residual
branch zero (all-zero folded conv weights), grouped convs, hard-swish, exact GELU (Erf),
LayerNorm, softmax attention. Each factory seeds torch so every call builds the same weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _init_cnn(model: nn.Module) -> None:
    """timm ResNet._init_weights: kaiming-normal convs (fan_out, relu), BN gamma 1 / beta 0, then
    zero_init_last on every block; BN running statistics made non-trivial as after training."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    for m in model.modules():
        if hasattr(m, "zero_init_last"):
            m.zero_init_last()


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """timm resnet.BasicBlock: conv-bn-relu-conv-bn (+ downsample shortcut), relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)) + shortcut)


class Bottleneck(nn.Module):
    """timm resnet.Bottleneck with cardinality (ResNeXt): 1x1, grouped 3x3, 1x1 (x4 expansion)."""

    def __init__(self, cin: int, planes: int, stride: int = 1, cardinality: int = 4, base_width: int = 8):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * cardinality
        cout = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.relu(self.bn3(self.conv3(x)) + shortcut)


class ResNet(nn.Module):
    """timm ResNet: 7x7/2 stem, BN, ReLU, 3x3/2 max pool, stages, global average pool, fc."""

    def __init__(self, blocks: list[nn.Module], stem: int, features: int, classes: int = 10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(features, classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(x.mean((2, 3)))


def resnet() -> ResNet:
    torch.manual_seed(0)
    model = ResNet([BasicBlock(16, 16), BasicBlock(16, 32, 2), BasicBlock(32, 32), BasicBlock(32, 64, 2)], 16, 64)
    _init_cnn(model)
    return model


def resnext() -> ResNet:
    torch.manual_seed(1)
    model = ResNet([Bottleneck(16, 16), Bottleneck(64, 16), Bottleneck(64, 32, 2)], 16, 128)
    _init_cnn(model)
    return model


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class SqueezeExcite(nn.Module):
    """timm _efficientnet_blocks.SqueezeExcite as MobileNetV3 uses it: ReLU, hard-sigmoid gate."""

    def __init__(self, channels: int, rd_ratio: float = 0.25):
        super().__init__()
        rd = _make_divisible(channels * rd_ratio)
        self.conv_reduce = nn.Conv2d(channels, rd, 1)
        self.conv_expand = nn.Conv2d(rd, channels, 1)

    def forward(self, x):
        s = F.relu(self.conv_reduce(x.mean((2, 3), keepdim=True)))
        return x * F.hardsigmoid(self.conv_expand(s))


class InvertedResidual(nn.Module):
    """timm InvertedResidual: pw expand-bn-act, dw-bn-act, SE, pw linear-bn, + shortcut."""

    def __init__(self, cin: int, mid: int, cout: int, k: int, stride: int, act: type, se: bool):
        super().__init__()
        self.conv_pw, self.act1 = _conv_bn(cin, mid, 1), act()
        self.conv_dw, self.act2 = _conv_bn(mid, mid, k, stride, groups=mid), act()
        self.se = SqueezeExcite(mid) if se else nn.Identity()
        self.conv_pwl = _conv_bn(mid, cout, 1)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x):
        y = self.act1(self.conv_pw(x))
        y = self.se(self.act2(self.conv_dw(y)))
        y = self.conv_pwl(y)
        return y + x if self.has_skip else y


class MobileNetV3(nn.Module):
    """timm MobileNetV3: 3x3/2 stem + hard-swish, blocks, pool, 1x1 conv_head + hard-swish, classifier."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv_stem, self.act1 = _conv_bn(3, 16, 3, 2), nn.Hardswish()
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 16, 3, 2, nn.ReLU, True),
            InvertedResidual(16, 72, 24, 3, 2, nn.ReLU, False),
            InvertedResidual(24, 88, 24, 3, 1, nn.ReLU, False),
            InvertedResidual(24, 96, 40, 5, 2, nn.Hardswish, True),
            InvertedResidual(40, 240, 40, 5, 1, nn.Hardswish, True),
        )
        self.conv_head, self.act2 = nn.Conv2d(40, 128, 1), nn.Hardswish()
        self.classifier = nn.Linear(128, classes)

    def forward(self, x):
        x = self.blocks(self.act1(self.conv_stem(x)))
        x = self.act2(self.conv_head(x.mean((2, 3), keepdim=True)))
        return self.classifier(x.flatten(1))


def mobilenetv3() -> MobileNetV3:
    """timm's MobileNetV3 init (efficientnet_init_weights) does not zero the last BN gamma."""
    torch.manual_seed(2)
    model = MobileNetV3()
    _init_cnn(model)
    return model


class LayerNorm2d(nn.LayerNorm):
    """timm LayerNorm2d: LayerNorm over channels of an NCHW tensor (permute, normalise, permute)."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """timm layers.Mlp: fc1, exact GELU (erf), fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """timm convnext.Block (conv_mlp=False): dw 7x7, channels-last LayerNorm, Mlp, gamma, + shortcut."""

    def __init__(self, dim: int, ls_init_value: float = 1e-6):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim))

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.mlp(self.norm(x)).permute(0, 3, 1, 2)
        return x.mul(self.gamma.reshape(1, -1, 1, 1)) + shortcut


class ConvNeXt(nn.Module):
    """timm ConvNeXt: 4x4/4 patchify stem + LayerNorm2d, stages with LayerNorm2d + 2x2/2 downsample,
    global average pool, LayerNorm, head."""

    def __init__(self, dims=(24, 48), depths=(2, 2), classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
        stages = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            down = [] if i == 0 else [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            stages += down + [ConvNeXtBlock(dim, ls_init_value=0.5) for _ in range(depth)]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.mean((2, 3))))


def _init_transformer(model: nn.Module) -> None:
    """timm init: trunc-normal(0.02) Linear weights, zero biases (Conv2d keeps torch's default)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


def convnext() -> ConvNeXt:
    """Layer scale starts at 0.5 instead of timm's 1e-6 so the blocks' GELU/LayerNorm path is
    visible in the output (with 1e-6 the untrained blocks add nothing measurable)."""
    torch.manual_seed(3)
    model = ConvNeXt()
    _init_transformer(model)
    return model


class Attention(nn.Module):
    """timm layers.Attention, non-fused path: qkv, per-head scaled q @ k^T, softmax, @ v, proj."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3, bias=True), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    """timm vision_transformer.Block: x + attn(norm1(x)), x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """timm VisionTransformer: conv patch embed, cls token, learned position embedding, blocks,
    final LayerNorm, cls-token head."""

    def __init__(self, image: int = 32, patch: int = 8, dim: int = 48, depth: int = 2, heads: int = 4,
                 classes: int = 10):
        super().__init__()
        tokens = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit() -> VisionTransformer:
    torch.manual_seed(4)
    model = VisionTransformer()
    _init_transformer(model)
    nn.init.trunc_normal_(model.pos_embed, std=0.02)
    nn.init.normal_(model.cls_token, std=1e-6)
    return model
