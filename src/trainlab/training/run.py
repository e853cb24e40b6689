"""What a callback may use of the run it is called with (the `Run` protocol), and where a run
stands (`FitState`). fit() alone passes a FitContext; a training Session is a Run too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from torch import nn

from trainlab.errors import ConfigError


@dataclass
class FitState:
    """Where a run stands: saved in every checkpoint, so fit() can continue it exactly.
    Host values only (ints, lists of floats): a callback may read it on the step path.
    fit() writes it; a callback asks to stop by returning a reason from its hook."""
    epoch: int = 0  # epochs completed
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    step: int = 0  # steps done in the current (unfinished) epoch; 0 at epoch boundaries
    partial: dict | None = None  # that epoch's accumulators when stopped mid-way
    stopped: str | None = None  # why fit() returned early: "interrupt", "early-stop", or a callback's word
    epochs: int = 0  # the epochs this fit() runs to
    # the last step's loss, a device tensor (not saved): keep or copy it on the step path, never
    # read it there (a host read stalls the device every step)
    last_loss: torch.Tensor | None = field(default=None, repr=False)

    # the checkpoint's top-level keys for this part (the file format: unchanged since format 1)
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "global_step": self.global_step, "step": self.step,
                "partial": self.partial, "history": list(self.history)}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.global_step, self.history = d["epoch"], d["global_step"], list(d["history"])
        self.step, self.partial = d.get("step", 0), d.get("partial")


@runtime_checkable
class Run(Protocol):
    """Everything a hook may use of `run`. Anything else a callback needs (a folder, the
    monitor, whether this process is rank 0) it takes in its __init__."""
    model: nn.Module  # the weights kept (not the DDP- or compile-wrapped module the step runs)
    optimizer: torch.optim.Optimizer
    state: FitState


@dataclass
class FitContext:
    """The Run that fit() builds when it is called on its own."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    state: FitState


def stop_reason(vote, default: str) -> str | None:
    """A hook's return value as a reason to stop: None/False = go on, True = `default`, a word = itself."""
    if vote is None or vote is False:
        return None
    if vote is True:
        return default
    if isinstance(vote, str) and vote:
        return vote
    raise ConfigError(f"a callback hook returned {vote!r}: return None to go on, or True or a word to stop")
