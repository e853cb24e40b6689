"""The training loop and evaluation: the heartbeat every other part plugs into.

fit() runs epochs of forward -> loss -> backward -> step. The loss is never read back to
the host inside an epoch (`.item()` would stall the device every step): per-step losses
stay in a device tensor and are read once per epoch, which is also where a non-finite loss
is found and reported with its epoch and step.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from trainlab.data.loader import derive_seed
from trainlab.devices import check_same_device
from trainlab.errors import TrainlabError
from trainlab.inference import evaluate

log = logging.getLogger("trainlab")


class NonFiniteLoss(TrainlabError):
    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(f"the training loss became {value} at epoch {epoch}, step {step} of that "
                         "epoch; lower the learning rate or enable grad_clip and resume from "
                         "the last checkpoint")


# ---------------------------------------------------------------- training

_DROPOUT_SALT = 0x5EED_0003


@dataclass
class FitState:
    """Where a run stands: saved in every checkpoint, so fit() can continue it exactly."""
    epoch: int = 0  # epochs completed
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    step: int = 0  # steps done in the current (unfinished) epoch; 0 at epoch boundaries
    partial: dict | None = None  # that epoch's accumulators when stopped mid-way
    stopped: str | None = None  # why fit() returned early: "interrupt" or "early-stop"


@dataclass
class Instruments:
    """Optional parts around the heartbeat; each is None/off when not used."""
    scheduler: object = None
    scaler: object = None  # torch.amp.GradScaler (a disabled one is a pass-through)
    precision: object = None  # trainlab.precision.Precision
    ema: object = None  # torch.optim.swa_utils.AveragedModel, updated every step
    grad_clip: float = 0.0
    seed: int = 0
    rank: int = 0
    should_stop: Callable[[], bool] | None = None  # polled after every step (signals)
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None  # DDP: sum across ranks
    before_eval: Callable[[], None] | None = None  # DDP: make every rank's weights identical
    partial_ok: bool = True  # whether a stop may save mid-epoch state (not under DDP)


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, unit="step", dynamic_ncols=True)


def train_epoch(model, optimizer, loader, state: FitState, *, loss_fn, inst: Instruments,
                bar=None) -> dict | None:
    """Train the epoch `state.epoch` from `state.step`. Returns its record, or None when
    `inst.should_stop` asked to stop mid-way (then `state.step/partial` say where)."""
    model.train()
    epoch = state.epoch
    steps = len(loader)
    device = loader.device
    if state.step == 0:
        # Dropout's randomness comes from (seed, epoch, rank): an epoch replays exactly on resume.
        torch.manual_seed(derive_seed(inst.seed, epoch, inst.rank, _DROPOUT_SALT))
        losses = torch.zeros(steps, device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        loader.set_epoch(epoch)
    else:
        p = state.partial
        losses, correct, seen = p["losses"].to(device), p["correct"].to(device), p["seen"]
        loader.set_epoch(epoch, state.step, p.get("aug_state"))
    autocast = inst.precision.autocast(device) if inst.precision else contextlib.nullcontext()
    scaler = inst.scaler
    i = state.step
    for x, y in loader:
        with autocast:
            out = model(x)
            loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if inst.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), inst.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if inst.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), inst.grad_clip)
            optimizer.step()
        if inst.scheduler is not None:
            inst.scheduler.step()
        if inst.ema is not None:
            inst.ema.update_parameters(model)
        losses[i] = loss.detach()
        correct += (out.detach().argmax(1) == y).sum()
        seen += len(y)
        i += 1
        state.global_step += 1
        if bar is not None:
            bar.update(1)
        if i < steps and inst.should_stop is not None and inst.should_stop():
            state.step = i
            state.partial = {"losses": losses.cpu(), "correct": correct.cpu(), "seen": seen,
                             "aug_state": loader.aug_state(), "rng": rng_state()} if inst.partial_ok else None
            return None
    state.step, state.partial = 0, None
    if inst.reduce is not None:  # DDP: every rank reports the same numbers
        world = float(inst.reduce(torch.ones((), device=device)))
        losses = inst.reduce(losses) / world
        correct = inst.reduce(correct)
        seen = int(inst.reduce(torch.tensor(seen, device=device)))
    # One host sync per epoch: here the losses are read and checked.
    losses_cpu = losses.cpu()
    finite = torch.isfinite(losses_cpu)
    if not finite.all():
        bad = int((~finite).nonzero()[0])
        raise NonFiniteLoss(epoch + 1, bad + 1, float(losses_cpu[bad]))
    return {"train_loss": float(losses_cpu.mean()), "train_acc": int(correct) / max(1, seen)}


def rng_state() -> dict:
    """Every generator a step draws from, as tensors and plain values (weights_only-safe)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def fit(model: nn.Module, optimizer, train_loader, *, epochs: int, val_loader=None,
        test_loader=None, loss_fn=None, inst: Instruments | None = None,
        state: FitState | None = None, on_epoch_end: Callable[[FitState], bool | None] | None = None,
        progress: bool | None = None, eval_model: nn.Module | None = None,
        tta_flip: bool = False) -> FitState:
    """Train until `epochs` epochs are complete, continuing `state` when resuming.

    Each epoch is evaluated on `val_loader` (for selection) and `test_loader` (reporting
    only: nothing here chooses by test results), appended to `state.history`, then handed
    to `on_epoch_end` (logging, checkpointing); if that returns True, training stops
    (early stopping). `eval_model` (e.g. the EMA weights) is what gets evaluated.
    """
    state = state or FitState()
    inst = inst or Instruments()
    check_same_device(model, train_loader.device, optimizer)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    eval_model = eval_model or model
    if progress is None:
        progress = sys.stderr.isatty()
    if state.step and state.partial and state.partial.get("rng") is not None:
        set_rng_state(state.partial["rng"])
    while state.epoch < epochs:
        t0 = time.perf_counter()
        bar = _progress(len(train_loader), f"epoch {state.epoch + 1}/{epochs}", progress, state.step)
        try:
            record = train_epoch(model, optimizer, train_loader, state, loss_fn=loss_fn, inst=inst, bar=bar)
        finally:
            if bar is not None:
                bar.close()
        if record is None:
            state.stopped = "interrupt"
            return state
        train_seconds = time.perf_counter() - t0
        state.epoch += 1
        row = {"epoch": state.epoch, "global_step": state.global_step,
               "lr": optimizer.param_groups[0]["lr"], **record}
        if inst.before_eval is not None:
            inst.before_eval()
        for split, loader in (("val", val_loader), ("test", test_loader)):
            if loader is not None:
                autocast = inst.precision.autocast(loader.device) if inst.precision else None
                m = evaluate(eval_model, loader, tta_flip, inst.reduce, autocast)
                if m["n"]:
                    row[f"{split}_loss"], row[f"{split}_acc"] = m["loss"], m["acc"]
        row["train_seconds"] = train_seconds
        row["seconds"] = time.perf_counter() - t0
        state.history.append(row)
        if on_epoch_end is not None and on_epoch_end(state):
            state.stopped = "early-stop"
            return state
        if inst.should_stop is not None and inst.should_stop():
            state.stopped = "interrupt"  # at an epoch boundary: the epoch's checkpoint is the resume point
            return state
    return state
