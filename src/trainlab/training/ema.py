"""Weight EMA (an exponential moving average of the weights and BatchNorm statistics) with a
warm-up, so that it also helps short schedules.

A fixed decay d keeps d**n of the very first (random) weights after n steps: 0.999 still
weighs the initialization at 22% after 1,500 steps (a 7-epoch resnet run evaluated that
average and scored 63.7%; benchmarks/RESULTS.md). The warm-up caps the decay at (1 + n) / (10 + n) after n updates
(the `num_updates` rule of TensorFlow's ExponentialMovingAverage): early on the average
follows the weights closely, later it settles to the configured decay (0.999 from ~9,000 steps).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay(decay: float, num_averaged: int) -> float:
    """The decay used for the update after `num_averaged` earlier updates."""
    return min(decay, (1 + num_averaged) / (10 + num_averaged))


def warmup_ema_fn(decay: float):
    """An AveragedModel `multi_avg_fn`: one fused lerp per (device, dtype) group."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        # AveragedModel already reads n_averaged on the host every step (it checks for 0)
        d = ema_decay(decay, int(num_averaged))
        if averaged[0].is_floating_point() or averaged[0].is_complex():
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked)
            for a, c in zip(averaged, current):
                a.copy_(a * d + c * (1 - d))

    return update


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """The EMA copy of `model`, buffers included; call .update_parameters(model) after every
    optimizer step. Its state_dict carries the update count, so a resume continues exactly."""
    return AveragedModel(model, multi_avg_fn=warmup_ema_fn(decay), use_buffers=True)
