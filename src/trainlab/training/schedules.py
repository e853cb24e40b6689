"""The schedules that are not a fixed curve of the step: `plateau` (reduce the rate by a factor when
the monitored metric has not improved for N validations), and the milestone rule of `step`.

`plateau` is a callback whose `scale` the LambdaLR's factor reads (training.optim.lr_multiplier):
the scheduler stays the one LambdaLR every schedule uses, so the step path, the amnesia fork and
resume overrides work unchanged. Its own state (best, counter, scale) rides in every checkpoint
with the callbacks' states, and the optimizer's saved rate is the reduced one: a resume continues
exactly."""

from __future__ import annotations

import bisect
import logging
import math

from trainlab.training.callbacks import Callback

log = logging.getLogger("trainlab")


def step_factor(milestones: list[int], gamma: float, steps_per_epoch: int):
    """`step`: the rate times gamma once for each milestone epoch reached (after m epochs, as
    torch's MultiStepLR counts them), as a function of the global (optimizer) step."""
    bounds = sorted(m * steps_per_epoch for m in milestones)

    def factor(step: int) -> float:
        return gamma ** bisect.bisect_right(bounds, step)
    return factor


class Plateau(Callback):
    """`schedule = "plateau"`: after `patience` validations (epoch ends, and mid-epoch ones with
    --val-every) without an improvement of `metric` by more than `min_delta`, the rate is
    multiplied by `factor` (the counter then starts again). Runs after early stopping's
    monitor (order 10) and before the checkpoint writer (80), so a checkpoint holds the
    decision of its epoch."""
    order = 12
    state_key = "plateau"

    def __init__(self, metric: str, mode: str, factor: float, patience: int, min_delta: float = 0.0):
        self.metric, self.mode, self.factor, self.patience, self.min_delta = metric, mode, factor, patience, min_delta
        self.best: float | None = None
        self.counter = 0
        self.scale = 1.0  # the LambdaLR's factor
        self.scheduler = None  # the LambdaLR that reads `scale` (set by the builder)

    def _observe(self, run, row) -> None:
        value = row.get(self.metric)
        if value is None or not math.isfinite(value):
            return  # (early stopping's monitor refuses it in words, before this)
        if self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                 else value > self.best + self.min_delta):
            self.best, self.counter = value, 0
            return
        self.counter += 1
        if self.counter >= self.patience:
            self.scale *= self.factor
            self.counter = 0
            self._apply(run.optimizer)
            log.info("plateau: %s has not improved for %d validations: the rate is now %.3g of its start",
                     self.metric, self.patience, self.scale)

    def _apply(self, optimizer) -> None:
        """The new rate from the next step on (the LambdaLR sets it again after that step)."""
        if self.scheduler is None:
            for group in optimizer.param_groups:
                group["lr"] *= self.factor
            return
        continue_schedule(optimizer, self.scheduler, self.scheduler.last_epoch)

    def on_epoch_end(self, run, row):
        self._observe(run, row)

    def on_validation_end(self, run, row):
        self._observe(run, row)

    def state_dict(self) -> dict:
        return {"best": self.best, "counter": self.counter, "scale": self.scale}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.counter, self.scale = d["best"], int(d["counter"]), float(d["scale"])


def continue_schedule(optimizer, scheduler, step: int) -> None:
    """Set the optimizer's rates to the schedule's at `step`, now: a plateau's new factor, or a
    fresh optimizer (the "amnesia" fork) whose schedule continues at `step` (a changed --lr
    included)."""
    scheduler.last_epoch = step
    rates = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, rates):
        group["lr"] = lr
    scheduler._last_lr = rates
