"""One code path for CPU, CUDA and MPS: choose the device, name it, and check that the
model, its optimizer state and the data agree on it."""

from __future__ import annotations

import re

import torch
from torch import nn

from trainlab.errors import ConfigError, TrainlabError


class DeviceMismatch(TrainlabError):
    pass


def pick_device(requested: str = "auto") -> torch.device:
    """auto: CUDA, then MPS, then CPU. An explicit device that is absent is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(requested, str) or not re.fullmatch(r"cpu|mps|cuda(:\d{1,3})?", requested):
        raise ConfigError(f"device {requested!r} is invalid: use auto, cpu, cuda, cuda:N or mps")
    dev = torch.device(requested)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainlabError(f"device {requested!r} was asked for but this machine has no usable "
                                "CUDA GPU; use --device cpu or --device auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainlabError(f"device {requested!r} does not exist: this machine has "
                                f"{torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainlabError("device 'mps' was asked for but is not available here; use --device auto")
    return dev


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def check_same_device(model: nn.Module, data_device: torch.device, optimizer=None) -> None:
    """Raise one clear error if the model, its optimizer state and the data disagree."""
    params = list(model.parameters())
    if not params:
        return
    model_dev = params[0].device
    if _norm(model_dev) != _norm(data_device):
        raise DeviceMismatch(f"the model is on {model_dev} but the data is on {data_device}; bring the data "
                             f"to the model: build the loader with device={str(model_dev)!r} (or move each "
                             f"batch, x.to({str(model_dev)!r})), after moving the model once to the device "
                             "you train on")
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                if torch.is_tensor(v) and v.dim() > 0 and _norm(v.device) != _norm(model_dev):
                    raise DeviceMismatch(f"the optimizer state is on {v.device} but the model is on "
                                         f"{model_dev}; load the optimizer state after moving the "
                                         "model (or with map_location)")


def _norm(d: torch.device) -> torch.device:
    if d.type == "cuda" and d.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return d
