"""The learning-rate range test: from the recipe's start state, raise the rate exponentially
over a few hundred steps, follow the smoothed loss, stop when it diverges, and suggest a
rate. It trains throwaway copies: no run folder is touched and every random generator is
put back as it was, so a run started afterwards is the run it would have been.

Its parts are a training Session's, built by the same code from the same config (the data
options, the run's checks, the per-class subset, init_from, freeze and the head/body rates,
channels_last, compile, precision, grad_clip): the rate is found for the run that will use it.
The config keys it cannot use (what happens after a step: epochs, schedule, checkpoints, early
stopping, EMA) are listed in NOT_USED; the CLI refuses them by name.

The suggestion's rule (Smith 2017, as fastai popularised it): the rate at the lowest
smoothed loss, divided by 10 -- the largest rate that is still safely on the descending part
of the curve. With several seeds it is read from the median curve; the band shows the spread.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
from trainlab.config import Config, resolve
from trainlab.data import Dataset, data_options, load_dataset
from trainlab.errors import ConfigError
from trainlab.training.callbacks import Callback
from trainlab.training.loop import NonFiniteLoss, StepParts, fit
from trainlab.training.run import FitContext, FitState
from trainlab.training.session import Session
from trainlab.training.state import capture_rng, restore_rng

log = logging.getLogger("trainlab")

CHECK_EVERY = 10  # steps between the host reads of the loss (divergence is noticed that late at most)
# run keys the range test cannot use, and why (it sets the rate itself, step by step, and keeps nothing)
NOT_USED = {
    "epochs": "it runs --steps steps", "schedule": "it sets the rate itself, step by step",
    "warmup_epochs": "it sets the rate itself, step by step", "ema": "it evaluates nothing",
    "tta_flip": "it evaluates nothing", "test_every_epoch": "it evaluates nothing", "patience": "it evaluates nothing", "min_delta": "it evaluates nothing",
    "monitor": "it evaluates nothing", "mode": "it evaluates nothing", "unfreeze_at": "it is the first epoch",
    "save_every": "it keeps no checkpoint", "keep": "it keeps no checkpoint", "name": "it makes no run folder",
    "rerun": "it makes no run folder", "tensorboard": "it writes the curve's figure, not events",
    "val_every": "it evaluates nothing", "keep_top": "it keeps no checkpoint", "track": "it logs no run",
    "log_every": "it logs no run", "plateau_factor": "it sets the rate itself, step by step",
    "plateau_patience": "it sets the rate itself, step by step", "step_gamma": "it sets the rate itself, step by step",
    "step_milestones": "it sets the rate itself, step by step",
}


@dataclass
class LRFindResult:
    lrs: list[float]  # the rate at each step (shared by every seed)
    losses: dict[int, list[float]]  # seed -> smoothed loss per step (shorter if it diverged)
    suggestion: float
    rule: str
    seconds: float
    model: str
    batch_size: int
    stopped: dict[int, str] = field(default_factory=dict)  # seed -> why it ended early
    input_shape: list[int] = field(default_factory=list)  # C, H, W of the images it trained on

    def median(self) -> list[float]:
        n = min(len(v) for v in self.losses.values())
        return [sorted(v[i] for v in self.losses.values())[len(self.losses) // 2] for i in range(n)]


def _check(steps: int, start_lr: float, end_lr: float, seeds) -> None:
    if not 10 <= steps <= 100_000:
        raise ConfigError(f"steps = {steps} is invalid: use 10 to 100000 (a few hundred is typical)")
    if not (0 < start_lr < end_lr <= 1e3 and math.isfinite(start_lr)):
        raise ConfigError(f"the range {start_lr:g} .. {end_lr:g} is invalid: need 0 < start < end <= 1000")
    if not seeds or len(seeds) > 16 or any(not 0 <= s < 2**63 for s in seeds):
        raise ConfigError("seeds must be 1 to 16 integers in [0, 2**63)")


def lr_find(config: Config | dict | None = None, *, data: Dataset | None = None, steps: int = 200,
            start_lr: float = 1e-6, end_lr: float = 1.0, seeds=(0,), smoothing: float = 0.98,
            diverge: float = 4.0) -> LRFindResult:
    """Run the range test for `config` (its model, recipe, batch size, precision, data) on
    each seed; returns the curves and the suggested rate. The loss is smoothed exponentially
    (`smoothing`, bias-corrected) and a seed stops once it exceeds `diverge` times its best."""
    cfg = resolve(config.to_dict()) if isinstance(config, Config) else resolve(config or {})
    seeds = [int(s) for s in seeds]
    _check(steps, start_lr, end_lr, seeds)
    saved_rng, saved_threads = capture_rng(), torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        if data is None:
            data = load_dataset(cfg.dataset, cfg.data_dir, **data_options(cfg.to_dict()))
        lrs = [start_lr * (end_lr / start_lr) ** (i / (steps - 1)) for i in range(steps)]
        losses, stopped = {}, {}
        for seed in seeds:
            losses[seed], why = _one_seed(resolve({**cfg.to_dict(), "seed": seed}), data, lrs, smoothing, diverge)
            if why:
                stopped[seed] = why
    finally:
        restore_rng(saved_rng)
        torch.set_num_threads(saved_threads)
    result = LRFindResult(lrs, losses, 0.0, "", time.perf_counter() - t0, cfg.model, cfg.train.batch_size, stopped,
                          list(data.input_shape))
    curve = result.median()
    best = min(range(len(curve)), key=curve.__getitem__)
    result.suggestion = lrs[best] / 10
    result.rule = (f"the lowest smoothed loss ({curve[best]:.4f}) is at lr {lrs[best]:.3g}; a tenth of it, "
                   f"{result.suggestion:.3g}, is still on the descending slope")
    return result


class RangeTest(Callback):
    """The range test as a callback on fit() (fastai's way): it sets each step's rate, keeps each
    step's loss on the device, reads them every CHECK_EVERY steps, and stops the run once the
    smoothed loss diverges or the last rate is done."""

    def __init__(self, lrs: list[float], shares: list[float], smoothing: float, diverge: float):
        self.lrs, self.shares, self.smoothing, self.diverge = lrs, shares, smoothing, diverge
        self.raw: torch.Tensor | None = None
        self.done = 0  # steps taken
        self.smoothed: list[float] = []
        self.avg, self.best = 0.0, math.inf
        self.why: str | None = None

    def _set_rate(self, optimizer, i: int) -> None:
        for g, share in zip(optimizer.param_groups, self.shares):  # each group keeps its share
            g["lr"] = self.lrs[i] * share

    def on_fit_start(self, run):
        self.raw = torch.zeros(len(self.lrs), device=next(run.model.parameters()).device)
        self._set_rate(run.optimizer, 0)

    def on_step_end(self, run):
        self.raw[self.done] = run.state.last_loss  # a device copy: no host read on the step path
        self.done += 1
        if self.done % CHECK_EVERY == 0 or self.done == len(self.lrs):
            if self.read():
                return "diverged"
        if self.done == len(self.lrs):
            return "done"
        self._set_rate(run.optimizer, self.done)
        return None

    def read(self) -> bool:
        """Smooth the losses not read yet (one host read); True once the curve has diverged."""
        for value in self.raw[len(self.smoothed):self.done].tolist():
            self.avg = self.smoothing * self.avg + (1 - self.smoothing) * value
            self.smoothed.append(self.avg / (1 - self.smoothing ** (len(self.smoothed) + 1)))
            self.best = min(self.best, self.smoothed[-1])
            if not math.isfinite(self.smoothed[-1]) or self.smoothed[-1] > self.diverge * self.best:
                self.why = f"diverged at lr {self.lrs[len(self.smoothed) - 1]:.3g}"
                return True
        return False


def _one_seed(cfg: Config, data: Dataset, lrs, smoothing, diverge) -> tuple[list[float], str | None]:
    """One seed's curve, trained by fit() with the run's own parts (clipping, precision,
    channels_last, gradient accumulation, the batch transforms, the fine-tuning layout and
    freezing, the data options): the rate it suggests is for the step the run will take."""
    s = Session(cfg, data, progress=False)
    shares = [g["initial_lr"] / cfg.train.lr if cfg.train.lr else 1.0 for g in s.optimizer.param_groups]
    test = RangeTest(lrs, shares, smoothing, diverge)
    parts = StepParts(precision=s.precision, scaler=s.scaler, grad_clip=cfg.train.grad_clip, seed=cfg.seed,
                      accumulate=cfg.train.accumulate)
    steps_per_epoch = -(-len(s.loaders["train"]) // cfg.train.accumulate)  # optimizer steps: what lrs counts
    epochs = -(-len(lrs) // steps_per_epoch)
    run = FitContext(s.model, s.optimizer, FitState())
    try:
        fit(s.train_model, s.optimizer, s.loaders["train"], epochs=epochs, loss_fn=s.loss_fn, parts=parts,
            state=run.state, callbacks=[*([s.finetune] if s.finetune else []), test], progress=False, run=run,
            transforms=s.transforms)
    except NonFiniteLoss:  # the loss went to inf/nan between two reads: the curve ends there
        test.read()
    return test.smoothed, test.why
