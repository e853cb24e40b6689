"""`mlp`: the plain baseline."""

from __future__ import annotations

import math

from torch import nn

from trainlab.models.registry import register
from trainlab.models.validators import int_list


@register("mlp", cpu_bf16=True)
def mlp(input_shape, num_classes, hidden=(256, 128)):
    """784-256-128-10 with ReLU: the plain baseline."""
    hidden = int_list("hidden", hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)  # plain ints: built on the meta device first, where tensors have no value
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
