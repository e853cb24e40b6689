"""The model registry: a spec (name + kwargs) -> nn.Module.

"Architecture in code, values in file": checkpoints store the spec, never a pickled module.
A released name's architecture never changes, so old checkpoints keep loading; a new design
gets a new name. Every factory takes the data's `input_shape` (C, H, W) and `num_classes`.

Your own model: register a factory with `@register("name")`, or name it by import path for
training (`--model mypkg.nets:make_net`). Loading a file resolves only registered names; an
import path stored in a file is imported only if the user allows that module explicitly, so
a file can never make trainlab import or call arbitrary code.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

import torch
from torch import nn

from .errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: make `factory(input_shape, num_classes, **kwargs) -> nn.Module` buildable by name."""
    def deco(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ConfigError(f"model name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory
    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def _resolve_factory(name: str, allow_import: tuple[str, ...] | None) -> Callable[..., nn.Module]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        if allow_import is not None and module_name not in allow_import:
            raise ConfigError(f"model {name!r} needs importing {module_name!r}, which is not allowed: "
                              f"pass --allow-import {module_name} if you trust that module")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigError(f"model {name!r}: cannot import {module_name!r} ({e})") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ConfigError(f"model {name!r}: {module_name} has no callable {attr!r}")
        return factory
    raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(available())}, "
                      "or name your own factory as module:function")


def build(name: str, input_shape=(1, 28, 28), num_classes: int = 10, *,
          allow_import: tuple[str, ...] | None = None, **kwargs) -> nn.Module:
    """Build a model from its spec. `allow_import=None` (training from your own command line)
    imports `module:function` names freely; loading from a file passes the allowed modules."""
    factory = _resolve_factory(name, allow_import)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None  # a builtin or C factory: let the call itself check the arguments
    if sig is not None:
        try:
            sig.bind(tuple(input_shape), num_classes, **kwargs)
        except TypeError as e:
            params = list(sig.parameters)[2:]
            raise ConfigError(f"model {name!r}: bad arguments {kwargs} ({e}); it takes "
                              f"{', '.join(params) or 'no keyword arguments'}") from None
    model = factory(tuple(input_shape), num_classes, **kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r}: the factory returned {type(model).__name__}, not an nn.Module")
    return model


def _check(name, value, ok, allowed):
    if not ok:
        raise ConfigError(f"model kwarg {name} = {value!r} is invalid: {allowed}")


# ---------------------------------------------------------------- released architectures

@register("mlp")
def mlp(input_shape, num_classes, hidden=(256, 128)):
    """784-256-128-10 with ReLU: the plain baseline."""
    hidden = tuple(hidden)
    _check("hidden", hidden, all(isinstance(h, int) and h > 0 for h in hidden), "positive ints")
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.tensor(input_shape).prod())
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register("mlp-reg")
def mlp_reg(input_shape, num_classes, hidden=(512, 256), dropout=0.3):
    """784-512-256-10; each hidden block Linear -> BatchNorm1d -> ReLU -> Dropout."""
    hidden = tuple(hidden)
    _check("hidden", hidden, all(isinstance(h, int) and h > 0 for h in hidden), "positive ints")
    _check("dropout", dropout, 0 <= dropout < 1, "a probability in [0, 1)")
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.tensor(input_shape).prod())
    for h in hidden:
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register("cnn")
def cnn(input_shape, num_classes, channels=(32, 64), fc=128, dropout=0.3):
    """conv(32,3)-BN-ReLU-maxpool, conv(64,3)-BN-ReLU-maxpool, FC 128, Dropout, FC."""
    channels = tuple(channels)
    _check("channels", channels, all(isinstance(c, int) and c > 0 for c in channels), "positive ints")
    _check("dropout", dropout, 0 <= dropout < 1, "a probability in [0, 1)")
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                   nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
    _check("channels", channels, h > 0 and w > 0, f"too many pooling stages for {input_shape}")
    layers += [nn.Flatten(), nn.Linear(c * h * w, fc), nn.ReLU(), nn.Dropout(dropout),
               nn.Linear(fc, num_classes)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- the speed / accuracy ladder

@register("cnn-fast")
def cnn_fast(input_shape, num_classes, channels=(16, 32, 64), fc=128, dropout=0.2):
    """A CNN designed for CPU speed: three 3x3 conv-BN-ReLU blocks (16/32/64), a 2x2 max-pool
    after each of the first two (28 -> 14 -> 7), then FC `fc` (0: none), Dropout, FC.

    Narrow early layers keep the full-resolution activations (the memory-bound part of a
    CPU step) small: 2.3M multiply-adds per image against `cnn`'s 4.2M, and half its
    full-resolution activation memory, at higher accuracy (benchmarks/RESULTS.md)."""
    channels = tuple(channels)
    _check("channels", channels, len(channels) >= 1 and all(isinstance(c, int) and c > 0 for c in channels),
           "one or more positive ints")
    _check("fc", fc, isinstance(fc, int) and fc >= 0, "0 (no hidden FC layer) or a positive int")
    _check("dropout", dropout, 0 <= dropout < 1, "a probability in [0, 1)")
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for i, out in enumerate(channels):
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        c = out
        if i < len(channels) - 1:  # pool between blocks, not after the last one
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
    _check("channels", channels, h > 0 and w > 0, f"too many pooling stages for {input_shape}")
    layers.append(nn.Flatten())
    if fc:
        layers += [nn.Linear(c * h * w, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
                   nn.Linear(fc, num_classes)]
    else:
        layers += [nn.Dropout(dropout), nn.Linear(c * h * w, num_classes)]
    return nn.Sequential(*layers)


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


@register("resnet")
def resnet(input_shape, num_classes, width=64, depth=2, stages=3, dropout=0.0):
    """A pre-activation ResNet for small images (28x28 / 32x32): a 3x3 stem, `stages` stages
    of `depth` pre-activation blocks with widths width, 2*width, 4*width (stride 2 between
    stages: 28 -> 14 -> 7), global average pooling, FC. The defaults (width 64, depth 2:
    14 weight layers, 2.8M parameters) are for the top of the ladder on a GPU; on a CPU use
    e.g. width=32 (a quarter of the compute)."""
    for name, value in (("width", width), ("depth", depth), ("stages", stages)):
        _check(name, value, isinstance(value, int) and not isinstance(value, bool) and value > 0,
               "a positive int")
    _check("dropout", dropout, 0 <= dropout < 1, "a probability in [0, 1)")
    c, h, w = input_shape
    _check("stages", stages, min(h, w) // 2 ** (stages - 1) >= 1,
           f"too many stride-2 stages for {input_shape}")
    return PreActResNet(c, num_classes, tuple(width * 2 ** i for i in range(stages)), depth, dropout)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
