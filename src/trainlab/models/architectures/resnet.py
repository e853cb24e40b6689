"""`resnet`: a pre-activation ResNet for small images, the top of the ladder."""

from __future__ import annotations

import torch
from torch import nn

from trainlab.models.registry import register
from trainlab.models.validators import MAX_WIDTH, check, check_dropout, is_int


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity (or 1x1 strided conv) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        # the projection shortcut takes the pre-activated input (He et al. 2016, pre-act)
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.drop(torch.relu(self.bn2(out))))
        return out + short


class PreActResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...], depth: int,
                 dropout: float):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            for b in range(depth):
                blocks.append(PreActBlock(cin, cout, 2 if (stage > 0 and b == 0) else 1, dropout))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = torch.relu(self.bn(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@register("resnet", recipe="resnet", conv=True)
def resnet(input_shape, num_classes, width=64, depth=2, stages=3, dropout=0.0):
    """A pre-activation ResNet for small images (28x28 / 32x32): a 3x3 stem, `stages` stages
    of `depth` pre-activation blocks with widths width, 2*width, 4*width (stride 2 between
    stages: 28 -> 14 -> 7), global average pooling, FC. The defaults (width 64, depth 2:
    14 weight layers, 2.8M parameters) are for the top of the ladder on a GPU; on a CPU use
    e.g. width=32 (a quarter of the compute)."""
    for name, value, high in (("width", width, MAX_WIDTH), ("depth", depth, 256), ("stages", stages, 16)):
        check(name, value, is_int(value, 1, high), f"an int from 1 to {high}")
    check_dropout(dropout)
    c, h, w = input_shape
    check("stages", stages, min(h, w) // 2 ** (stages - 1) >= 1,
          f"too many stride-2 stages for {input_shape}")
    widths = tuple(width * 2 ** i for i in range(stages))
    return PreActResNet(c, num_classes, widths, depth, dropout)
