"""`cnn`: two conv blocks and a hidden FC layer."""

from __future__ import annotations

from torch import nn

from trainlab.models.registry import register
from trainlab.models.validators import MAX_WIDTH, check, check_dropout, int_list, is_int


@register("cnn", recipe="fast-cnn", conv=True, cpu_bf16=True)
def cnn(input_shape, num_classes, channels=(32, 64), fc=128, dropout=0.3):
    """conv(32,3)-BN-ReLU-maxpool, conv(64,3)-BN-ReLU-maxpool, FC 128, Dropout, FC."""
    channels = int_list("channels", channels)
    check("fc", fc, is_int(fc, 1, MAX_WIDTH), f"an int from 1 to {MAX_WIDTH}")
    check_dropout(dropout)
    c, h, w = input_shape
    check("channels", channels, h >> len(channels) > 0 and w >> len(channels) > 0,
          f"too many pooling stages for {input_shape}")
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                   nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, fc), nn.ReLU(), nn.Dropout(dropout),
               nn.Linear(fc, num_classes)]
    return nn.Sequential(*layers)
