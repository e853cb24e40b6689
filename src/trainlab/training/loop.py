"""The training loop: the heartbeat every other part plugs into.

fit() runs epochs of forward -> loss -> backward -> step. Everything around it (best
checkpoint, early stopping, logging, signals, a user's own logic) is a callback. The loss
is never read back to the host inside an epoch (`.item()` would stall the device every
step): per-step losses stay in a device tensor and are read once per epoch, which is also
where a non-finite loss is found and reported with its epoch and step.

The host syncs that remain, all at epoch ends: the losses and accuracy read once, the
validation (and, only when asked, test) sums read once each, and under DDP their all-reduces; a
stop signal is polled as a Python flag (under DDP an all-reduce every `StopOnSignal.every` steps).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from trainlab.data.batch_transforms import apply_transforms, batch_seed, check_soft_targets, check_transforms, hard_labels
from trainlab.data.loader import derive_seed
from trainlab.data.torch_loader import as_loader
from trainlab.devices import check_same_device
from trainlab.errors import ConfigError, TrainlabError
from trainlab.inference import evaluate
from trainlab.training.callbacks import Callback, CallbackList
from trainlab.training.run import FitContext, FitState

log = logging.getLogger("trainlab")

_DROPOUT_SALT = 0x5EED_0003

# A row that carries per-epoch test metrics says so: they are there to watch, never to choose by.
TEST_NOTE_KEY, TEST_NOTE = "test_note", "not for selection"


class NonFiniteLoss(TrainlabError):
    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(f"the training loss became {value} at epoch {epoch}, step {step} of that "
                         "epoch; lower the learning rate or enable grad_clip and resume from "
                         "the last checkpoint")


@dataclass
class StepParts:
    """The numeric parts of a step besides model, optimizer and loss. A disabled GradScaler
    is a pass-through (scale by 1, step, no-op update), so there is one step path."""
    scheduler: object = None
    scaler: object = None  # torch.amp.GradScaler; None: a disabled one
    precision: object = None  # trainlab.training.precision.Precision
    ema: object = None  # torch.optim.swa_utils.AveragedModel, updated every step
    grad_clip: float = 0.0
    seed: int = 0
    rank: int = 0
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None  # DDP: sum across ranks
    before_eval: Callable[[], None] | None = None  # DDP: make every rank's weights identical
    partial_ok: bool = True  # whether a stop may save mid-epoch state (not under DDP)
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)


class _EpochFunction(Callback):
    def __init__(self, fn):
        self.fn = fn

    def on_epoch_end(self, run, row):
        return self.fn(run.state)


def _hook(state: FitState, call: Callable[[], str | None]) -> None:
    """The one stop channel: the reason a hook returns (the first one stands). A callback that
    writes run.state.stopped itself is refused in words, not silently obeyed or ignored."""
    before = state.stopped
    reason = call()
    if state.stopped != before:
        raise ConfigError(f"a callback set run.state.stopped = {state.stopped!r}; return the reason from "
                          "the hook instead (e.g. return 'my-reason' from on_step_end or on_epoch_end)")
    if reason is not None and state.stopped is None:
        state.stopped = reason


def _checking_targets(loss_fn):
    def loss(out, y):
        check_soft_targets(y, out)
        return loss_fn(out, y)
    return loss


BAR_REFRESH = 0.5  # seconds between the bar's redraws: its loss is read from the device then only


@functools.cache
def _bar_class():
    try:  # a widget in a notebook that has ipywidgets; else the text bar (without tqdm.auto's warning)
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm

    class Bar(tqdm):
        """Shows the epoch's running train loss: read from the device when the bar is redrawn
        (every BAR_REFRESH seconds at most), never per step."""
        losses = None  # the epoch's per-batch losses, a device tensor (train_epoch sets it)

        def display(self, *args, **kwargs):
            if self.losses is not None and self.n:
                self.set_postfix_str(f"loss {float(self.losses[:self.n].mean()):.4f}", refresh=False)
            return super().display(*args, **kwargs)

    return Bar


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    return _bar_class()(total=total, initial=initial, desc=desc, leave=False, unit="step", dynamic_ncols=True,
                        mininterval=BAR_REFRESH)


def train_epoch(model, optimizer, loader, state: FitState, *, loss_fn, parts: StepParts,
                callbacks: CallbackList, run, bar=None, transforms=(), validate: Callable[[], None] | None = None,
                val_every: int = 0) -> dict | None:
    """Train the epoch `state.epoch` from `state.step`. Returns its record, or None when a
    callback asked to stop mid-way (then `state.step/partial` say where).

    Gradient accumulation (`parts.accumulate` = N): the loader's batches are micro-batches, N to
    an optimizer step, the epoch's last group possibly shorter (it still steps). `state.step`
    counts the epoch's micro-batches (where the loader resumes), `state.global_step` optimizer
    steps (what schedules, EMA and `on_step_end` count). Hooks run after optimizer steps only,
    so a stop -- and a mid-epoch checkpoint -- always falls between groups, where no gradient
    is pending: the saved state is complete without the gradients, and resume is exact."""
    model.train()
    epoch = state.epoch
    steps = len(loader)
    device = loader.device
    if state.step == 0:
        # Dropout's randomness comes from (seed, epoch, rank): an epoch replays exactly on resume.
        torch.manual_seed(derive_seed(parts.seed, epoch, parts.rank, _DROPOUT_SALT))
        losses = torch.zeros(steps, device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        loader.set_epoch(epoch)
    else:
        p = state.partial
        losses, correct, seen = p["losses"].to(device), p["correct"].to(device), p["seen"]
        loader.set_epoch(epoch, state.step, p.get("aug_state"))
    if bar is not None:  # the bar reads the running loss from it at its redraws
        bar.losses = losses
    autocast = parts.precision.autocast(device) if parts.precision else contextlib.nullcontext()
    scaler = parts.scaler if parts.scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    n_acc = max(1, parts.accumulate)
    # DDP: no gradient all-reduce on a group's first N-1 micro-batches (the last one syncs the sum)
    no_sync = getattr(model, "no_sync", None) if n_acc > 1 else None
    i = state.step
    # batch transforms draw from a generator seeded per batch: the same draws after a resume
    tgen = torch.Generator(device=device) if transforms else None
    group = min(n_acc, steps - i)  # micro-batches in the current group
    for x, y in loader:
        if transforms:
            x, y = apply_transforms(transforms, x, y, tgen.manual_seed(batch_seed(parts.seed, epoch, i, parts.rank)))
        first = i % n_acc == 0
        last = (i + 1) % n_acc == 0 or i + 1 == steps
        if first:
            optimizer.zero_grad(set_to_none=True)
            group = min(n_acc, steps - i)
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with autocast:
                out = model(x)
                loss = loss_fn(out, y)
            # the group's gradient is the mean of its micro-batches' (a batch of their size: exact
            # when they are equal); N = 1 is the plain step
            scaler.scale(loss / group if group > 1 else loss).backward()
        losses[i] = detached = loss.detach()
        correct += (out.detach().argmax(1) == hard_labels(y)).sum()  # soft: the target's argmax
        seen += len(y)
        i += 1
        state.step = i
        if bar is not None:
            bar.update(1)
        if not last:
            continue
        _optimizer_step(model, optimizer, scaler, parts)
        state.last_loss = losses[i - group:i].mean() if group > 1 else detached  # the step's loss
        state.global_step += 1
        _hook(state, lambda: callbacks.on_step_end(run))
        if validate is not None and val_every and state.global_step % val_every == 0 and i < steps:
            # --val-every, after this step's hooks: a mid-epoch best.pt holds the whole step (its
            # hooks' state included) and this point of the epoch, so the partial epoch is set first
            state.partial = _partial(losses, correct, seen, loader, parts)
            validate()
        if state.stopped and i < steps:
            state.partial = _partial(losses, correct, seen, loader, parts)
            return None
    state.step, state.partial = 0, None
    if parts.reduce is not None:  # DDP: every rank reports the same numbers
        world = float(parts.reduce(torch.ones((), device=device)))
        losses = parts.reduce(losses) / world
        correct = parts.reduce(correct)
        seen = int(parts.reduce(torch.tensor(seen, device=device)))
    # One host sync per epoch: here the losses are read and checked.
    losses_cpu = losses.cpu()
    finite = torch.isfinite(losses_cpu)
    if not finite.all():
        bad = int((~finite).nonzero()[0])
        raise NonFiniteLoss(epoch + 1, bad + 1, float(losses_cpu[bad]))
    return {"train_loss": float(losses_cpu.mean()), "train_acc": int(correct) / max(1, seen)}


def _optimizer_step(model, optimizer, scaler, parts: StepParts) -> None:
    """Clip the (accumulated) gradients, step, then the schedule and the EMA: once per optimizer step."""
    if parts.grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients (a no-op when disabled)
        nn.utils.clip_grad_norm_(model.parameters(), parts.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if parts.scheduler is not None:
        parts.scheduler.step()
    if parts.ema is not None:
        parts.ema.update_parameters(model)


def _partial(losses, correct, seen: int, loader, parts: StepParts) -> dict | None:
    """An unfinished epoch's accumulators (None under DDP: each rank holds only its own)."""
    return {"losses": losses.cpu(), "correct": correct.cpu(), "seen": seen,
            "aug_state": loader.aug_state()} if parts.partial_ok else None


def fit(model: nn.Module, optimizer, train_loader, *, epochs: int, val_loader=None,
        test_loader=None, loss_fn=None, parts: StepParts | None = None,
        state: FitState | None = None, callbacks: list[Callback] | CallbackList | None = None,
        progress: bool | None = None, eval_model: nn.Module | None = None,
        tta_flip: bool = False, run=None, on_epoch_end: Callable[[FitState], bool | None] | None = None,
        transforms=(), val_every: int = 0) -> FitState:
    """Train until `epochs` epochs are complete, continuing `state` when resuming.

    Each epoch is evaluated on `val_loader` (for selection), appended to `state.history`, then
    handed to the callbacks' on_epoch_end; if any returns True, training stops (e.g. early
    stopping). A `test_loader` is evaluated every epoch too, an extra pass each: its row keys
    (test_loss, test_acc) come with test_note = "not for selection"; leave it out and evaluate
    the test split once, on the model you chose, when training is done.
    `eval_model` (e.g. the EMA weights) is what gets evaluated. Callbacks are called with
    `run` (a training.run.Run; default: a FitContext of model, optimizer and state); a hook
    stops the run by returning a reason. `on_epoch_end(state)`, a plain function, is the
    one-hook shorthand of a callback. `transforms`: callables t(x, y, generator) -> (x, y) applied in
    order to each training batch on its device (trainlab.data.batch_transforms); the generator is
    seeded per batch from (seed, epoch, step, rank), so a resume draws what the run would have.
    `val_every` (optimizer steps; 0 = off): validation mid-epoch as well, every that many steps
    (not at an epoch's last step: the epoch's own evaluation follows); its row, marked by a
    "step" key, goes to the callbacks' on_validation_end (early stopping can act there).
    """
    transforms = check_transforms(transforms)
    state = state or FitState()
    state.epochs = epochs
    parts = parts or StepParts()
    if on_epoch_end is not None:
        callbacks = [*(callbacks.callbacks if isinstance(callbacks, CallbackList) else callbacks or []),
                     _EpochFunction(on_epoch_end)]
    cbs = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks or [])
    run = run if run is not None else FitContext(model, optimizer, state)
    # torch DataLoaders: batches moved to the model's device as they come, the order seeded by trainlab
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    train_loader, val_loader, test_loader = (as_loader(x, device, parts.seed)
                                             for x in (train_loader, val_loader, test_loader))
    check_same_device(model, train_loader.device, optimizer)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    if transforms:  # soft targets of the wrong width end in words, not in the loss's shape error
        loss_fn = _checking_targets(loss_fn)
    eval_model = eval_model or model
    if progress is None:
        progress = sys.stderr.isatty()
    state.stopped = None

    def evaluate_into(row: dict, splits) -> None:
        if parts.before_eval is not None:
            parts.before_eval()
        for split, loader in splits:
            if loader is not None:
                autocast = parts.precision.autocast(loader.device) if parts.precision else None
                m = evaluate(eval_model, loader, tta_flip, parts.reduce, autocast)
                if m["n"]:
                    row[f"{split}_loss"], row[f"{split}_acc"] = m["loss"], m["acc"]
                    if split == "test":
                        row[TEST_NOTE_KEY] = TEST_NOTE

    def validate() -> None:  # mid-epoch (val_every): the validation split only
        row = {"epoch": state.epoch + 1, "step": state.step, "global_step": state.global_step,
               "lr": optimizer.param_groups[0]["lr"]}
        evaluate_into(row, (("val", val_loader),))
        _hook(state, lambda: cbs.on_validation_end(run, row))

    cbs.on_fit_start(run)
    try:
        while state.epoch < epochs and not state.stopped:
            t0 = time.perf_counter()
            bar = _progress(len(train_loader), f"epoch {state.epoch + 1}/{epochs}", progress, state.step)
            try:
                record = train_epoch(model, optimizer, train_loader, state, loss_fn=loss_fn, parts=parts,
                                     callbacks=cbs, run=run, bar=bar, transforms=transforms, val_every=val_every,
                                     validate=validate if val_loader is not None else None)
            finally:
                if bar is not None:
                    bar.close()
            if record is None:
                break  # stopped mid-epoch: state.step / state.partial say where
            train_seconds = time.perf_counter() - t0
            state.epoch += 1
            row = {"epoch": state.epoch, "global_step": state.global_step,
                   "lr": optimizer.param_groups[0]["lr"], **record}
            evaluate_into(row, (("val", val_loader), ("test", test_loader)))
            row["train_seconds"] = train_seconds
            row["seconds"] = time.perf_counter() - t0
            state.history.append(row)
            _hook(state, lambda: cbs.on_epoch_end(run, row))
    except BaseException:
        try:  # handlers restored, files closed; the original error is the one that propagates
            cbs.on_fit_end(run)
        except Exception as e:  # noqa: BLE001
            log.warning("a callback's on_fit_end failed after an error: %s", e)
        raise
    cbs.on_fit_end(run)
    return state
