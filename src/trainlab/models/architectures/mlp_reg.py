"""`mlp-reg`: the baseline MLP, wider and regularized."""

from __future__ import annotations

import math

from torch import nn

from trainlab.models.registry import register
from trainlab.models.validators import check_dropout, int_list


@register("mlp-reg", cpu_bf16=True)
def mlp_reg(input_shape, num_classes, hidden=(512, 256), dropout=0.3):
    """784-512-256-10; each hidden block Linear -> BatchNorm1d -> ReLU -> Dropout."""
    hidden = int_list("hidden", hidden)
    check_dropout(dropout)
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)  # plain ints: built on the meta device first, where tensors have no value
    for h in hidden:
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
