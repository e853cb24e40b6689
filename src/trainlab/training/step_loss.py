"""The train loss every N optimizer steps, for the trackers (TensorBoard, MLflow): each
step's loss is added on the device (no host read on the step path) and the window's mean is
read to the host once, at every N-th step."""

from __future__ import annotations

import torch


class StepLoss:
    """`add(state)` after every optimizer step; at each global step that is a multiple of
    `every` it returns (global_step, the mean loss of the steps since the last reading)."""

    def __init__(self, every: int):
        self.every = every
        self._sum: torch.Tensor | None = None
        self._n = 0

    def add(self, state) -> tuple[int, float] | None:
        loss = state.last_loss
        if not self.every or loss is None:
            return None
        loss = loss.detach().float()
        if self._sum is not None and self._sum.device != loss.device:  # a window restored on the CPU
            self._sum = self._sum.to(loss.device)
        # a device add, not a read: the step path stays free of host syncs
        self._sum = loss.clone() if self._sum is None else self._sum.add_(loss)
        self._n += 1
        if state.global_step % self.every:
            return None
        value = float(self._sum) / self._n  # the window's one host read
        self._sum, self._n = None, 0
        return state.global_step, value

    def state_dict(self) -> dict:
        """The open window, so that a resume mid-window reports the same means as a run that
        never stopped (its sum leaves the device once per checkpoint)."""
        return {"sum": None if self._sum is None else self._sum.detach().cpu(), "n": self._n}

    def load_state_dict(self, state: dict | None) -> None:
        state = state if isinstance(state, dict) else {}
        total, n = state.get("sum"), state.get("n")
        # what state_dict() writes: a one-number float32 CPU tensor and 0 < n < every; else a new window
        if (isinstance(total, torch.Tensor) and total.numel() == 1 and total.device.type == "cpu"
                and total.dtype == torch.float32 and not total.is_sparse and type(n) is int and 0 < n < max(1, self.every)):
            self._sum, self._n = total.detach().clone().float().reshape(()), n
        else:
            self._sum, self._n = None, 0
