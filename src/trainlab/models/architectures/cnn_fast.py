"""`cnn-fast`: the speed / accuracy ladder's CPU-speed CNN."""

from __future__ import annotations

from torch import nn

from trainlab.models.registry import register
from trainlab.models.validators import MAX_WIDTH, check, check_dropout, int_list, is_int


@register("cnn-fast", recipe="fast-cnn", conv=True, cpu_bf16=True)
def cnn_fast(input_shape, num_classes, channels=(16, 32, 64), fc=128, dropout=0.2):
    """A CNN designed for CPU speed: three 3x3 conv-BN-ReLU blocks (16/32/64), a 2x2 max-pool
    after each of the first two (28 -> 14 -> 7), then FC `fc` (0: none), Dropout, FC.

    Narrow early layers keep the full-resolution activations (the memory-bound part of a
    CPU step) small: 2.3M multiply-adds per image against `cnn`'s 4.2M, and half its
    full-resolution activation memory, at higher accuracy (benchmarks/RESULTS.md)."""
    channels = int_list("channels", channels, min_len=1)
    check("fc", fc, is_int(fc, 0, MAX_WIDTH), f"0 (no hidden FC layer) or an int up to {MAX_WIDTH}")
    check_dropout(dropout)
    c, h, w = input_shape
    pools = len(channels) - 1  # between blocks, not after the last one
    check("channels", channels, h >> pools > 0 and w >> pools > 0, f"too many pooling stages for {input_shape}")
    layers: list[nn.Module] = []
    for i, out in enumerate(channels):
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        c = out
        if i < pools:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
    layers.append(nn.Flatten())
    if fc:
        layers += [nn.Linear(c * h * w, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
                   nn.Linear(fc, num_classes)]
    else:
        layers += [nn.Dropout(dropout), nn.Linear(c * h * w, num_classes)]
    return nn.Sequential(*layers)
