"""Callbacks: what happens around the heartbeat, in a declared order.

Five hooks, each called with `run` (a `training.run.Run`: its `model`, `optimizer` and `state`,
nothing else; a callback takes whatever more it needs in its __init__):

    on_fit_start(run)             once, before the first step (also on resume)
    on_step_end(run) -> reason    after every optimizer step: the step path (see below)
    on_epoch_end(run, row) -> reason   after each epoch's evaluation
    on_validation_end(run, row) -> reason   after a mid-epoch validation (--val-every): `row`
                                  holds epoch (the one in progress), step, global_step, lr and
                                  the val_* metrics only; run.state.partial holds that point
    on_fit_end(run)               once, when fit() returns or raises (like `finally`)
    state_dict() / load_state_dict(d)       the callback's own state, saved in every
                                  checkpoint under `state_key` and restored on resume

One way to stop: a hook returns a reason (a word, or True for "early-stop"); None goes on.
fit() records the first reason in `run.state.stopped` (in callback order: early stopping's,
at order 10, wins over a signal's at the same epoch end). `on_step_end` runs on the step
path: it must not read device values (no `.item()`, no `float(tensor)`, no printing a
tensor): each would stall the device once per step. It gets host counters only
(`run.state.step`, `.global_step`, `.epoch`). `on_epoch_end` may read anything: `row` holds
the epoch's metrics as Python floats, and a key it adds is logged with them (callbacks run
before the metrics log and the checkpoint writer, so their state and their keys are in that
epoch's checkpoint). Order: lower `order` first; the built-ins use 5 (fine-tuning), 10 (best
+ early stop), 70 (metrics log), 75 (TensorBoard), 80 (checkpoints), 90 (console), 95
(signals); a user's callback defaults to 50, and one with state must stay below 80, or its
epoch's change would miss that epoch's checkpoint (CallbackList refuses it).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

from trainlab.errors import ConfigError, TrainlabError
from trainlab.store import runs
from trainlab.store.checkpoint import make_checkpoint, serialize
from trainlab.store.manifest import CheckpointDir
from trainlab.training.run import Run, stop_reason
from trainlab.training.step_loss import StepLoss

log = logging.getLogger("trainlab")


class Callback:
    order = 50
    state_key: str | None = None  # default: the class name; must be unique in a run

    def on_fit_start(self, run: Run) -> None: ...

    def on_step_end(self, run: Run) -> bool | str | None: ...

    def on_epoch_end(self, run: Run, row: dict) -> bool | str | None: ...

    def on_validation_end(self, run: Run, row: dict) -> bool | str | None: ...

    def on_fit_end(self, run: Run) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class CallbackList:
    """Callbacks sorted by `order` (stable: equal orders keep the order given)."""

    def __init__(self, callbacks):
        callbacks = list(callbacks)
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise ConfigError(f"callback {cb!r} is invalid: subclass trainlab.Callback")
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        keys = [self.key(cb) for cb in self.callbacks]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ConfigError(f"two callbacks share the state key {dup[0]!r}: give one a distinct state_key")
        late = [self.key(cb) for cb in self.callbacks if cb.order >= CheckpointWriter.order
                and type(cb).state_dict is not Callback.state_dict and not isinstance(cb, _BUILTIN)]
        if late:
            raise ConfigError(f"callback {late[0]} keeps state but runs at order >= {CheckpointWriter.order}, "
                              "after the checkpoint writer: its epoch's state would miss that checkpoint; "
                              "give it an order below 80")
        # only the hooks a callback overrides are called: a step hook costs nothing otherwise
        self._step = [cb for cb in self.callbacks if type(cb).on_step_end is not Callback.on_step_end]

    @staticmethod
    def key(cb: Callback) -> str:
        return cb.state_key or type(cb).__name__

    def on_fit_start(self, run) -> None:
        for cb in self.callbacks:
            cb.on_fit_start(run)

    def on_step_end(self, run) -> str | None:
        reason = None
        for cb in self._step:  # every callback sees every step, even after a stop vote
            vote = stop_reason(cb.on_step_end(run), "early-stop")
            reason = reason or vote
        return reason

    def on_epoch_end(self, run, row: dict) -> str | None:
        reason = None
        for cb in self.callbacks:  # every callback sees every epoch, even after a stop vote
            vote = stop_reason(cb.on_epoch_end(run, row), "early-stop")
            reason = reason or vote
        return reason

    def on_validation_end(self, run, row: dict) -> str | None:
        reason = None
        for cb in self.callbacks:
            vote = stop_reason(cb.on_validation_end(run, row), "early-stop")
            reason = reason or vote
        return reason

    def on_fit_end(self, run) -> None:
        errors = []
        for cb in self.callbacks:  # each one runs, so handlers are restored and files closed
            try:
                cb.on_fit_end(run)
            except Exception as e:  # noqa: BLE001 -- raised after the others have run
                errors.append(e)
        if errors:
            raise errors[0]

    def state_dict(self, skip: tuple[str, ...] = ()) -> dict:
        """Each callback's state by key; `skip`: keys the checkpoint holds elsewhere."""
        return {self.key(cb): cb.state_dict() for cb in self.callbacks if self.key(cb) not in skip}

    def load_state_dict(self, states: dict, skip: tuple[str, ...] = ()) -> None:
        """Each callback gets its own saved state; one the checkpoint does not know (added
        on this resume) starts fresh, with a warning. `skip`: keys restored elsewhere."""
        for cb in self.callbacks:
            key = self.key(cb)
            if key in skip:
                continue
            if key in states:
                cb.load_state_dict(states[key])
            elif cb.state_dict():
                log.warning("resume: the checkpoint holds no state for callback %s: it starts fresh", key)


# ---------------------------------------------------------------- the built-ins

class BestAndEarlyStop(Callback):
    """Tracks the monitored metric (best.pt and early stopping); refuses a non-finite value
    (the weights diverged) before anything of that epoch is written."""
    order = 10
    state_key = "early_stopping"

    def __init__(self, metric: str = "val_loss", mode: str = "min", patience: int = 0,
                 min_delta: float = 0.0, advice=lambda: ""):
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best: float | None = None
        self.best_epoch = 0
        self.counter = 0
        self.improved = False  # this epoch is a new best (read by the checkpoint writer)
        self._advice = advice

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True if it is a new best."""
        if self.best is None:
            improved = True
        elif self.mode == "min":
            improved = value < self.best - self.min_delta
        else:
            improved = value > self.best + self.min_delta
        if improved:
            self.best, self.best_epoch, self.counter = value, epoch, 0
        else:
            self.counter += 1
        self.improved = improved
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.counter >= self.patience

    def on_epoch_end(self, run, row):
        value = row.get(self.metric)
        if value is None and "step" in row:  # a mid-epoch validation has no train_* metrics
            raise TrainlabError(f"val_every needs a val_* monitor, not {self.metric}: monitor val_loss or val_acc")
        if value is None or not math.isfinite(value):
            raise TrainlabError(f"the monitored metric {self.metric} is missing or not finite at epoch "
                                f"{row['epoch']} (the weights diverged): {self._advice()}")
        # Every rank sees the same all-reduced metrics, so all take the same decision here.
        self.update(value, row["epoch"])
        if self.should_stop:  # (order 10: wins over a signal at the same epoch end: the run is done)
            log.info("early stopping: %s has not improved by more than %g for %d epochs (best %.4f at "
                     "epoch %d)", self.metric, self.min_delta, self.patience, self.best, self.best_epoch)
            return "early-stop"
        return None

    def on_validation_end(self, run, row):  # patience counts validations: epoch ends and mid-epoch ones
        return self.on_epoch_end(run, row)

    def summary(self) -> dict:
        return {"metric": self.metric, "value": self.best, "epoch": self.best_epoch}

    def state_dict(self) -> dict:
        return {"metric": self.metric, "mode": self.mode, "patience": self.patience,
                "min_delta": self.min_delta, "best": self.best, "best_epoch": self.best_epoch,
                "counter": self.counter}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.best_epoch, self.counter = d["best"], d["best_epoch"], d["counter"]


class MetricsLog(Callback):
    """Each epoch's row appended to `folder`/metrics.jsonl (on rank 0 only: `is_main`)."""
    order = 70

    def __init__(self, folder: str | Path, is_main: bool = True):
        self.folder, self.is_main = Path(folder), is_main

    def on_epoch_end(self, run, row):
        if self.is_main:
            runs.append_metrics(self.folder, row)

    def on_validation_end(self, run, row):  # marked by its "step" key; epoch_rows() leaves it out
        self.on_epoch_end(run, row)


def fit_checkpoint(run: Run) -> dict:
    """What a checkpoint holds when fit() runs without a Session: the model, the optimizer and
    where the loop stands (a Session's own checkpoint holds every part of the run)."""
    return make_checkpoint(run.model, model_spec=None, optimizer=run.optimizer.state_dict(), **run.state.state_dict())


class CheckpointWriter(Callback):
    """best.pt when `monitor` says the epoch improved, last.pt every epoch, epoch-NNNN.pt every
    `save_every` epochs (the newest `keep` kept), top-epoch-NNNN.pt for the `keep_top` best
    epochs by the monitored metric, in `folder` with its manifest. Best first: if a crash lands
    inside the last.pt write, a verified best.pt of this same epoch is there to resume from.
    The checkpoint is `snapshot()` (default: fit_checkpoint), serialized once per epoch and
    written to each name. A mid-epoch validation (--val-every) writes best.pt and
    top-step-NNNNNNNN.pt only, holding the partial epoch, so a resume from either is exact."""
    order = 80

    def __init__(self, folder: str | Path | CheckpointDir, monitor: "BestAndEarlyStop", save_every: int = 0,
                 keep: int = 0, is_main: bool = True, snapshot: Callable[[], dict] | None = None,
                 keep_top: int = 0):
        self.checkpoints = folder if isinstance(folder, CheckpointDir) else CheckpointDir(Path(folder))
        self.monitor, self.save_every, self.keep, self.is_main = monitor, save_every, keep, is_main
        self.snapshot, self.keep_top = snapshot, keep_top

    def on_epoch_end(self, run, row):
        if not self.is_main:
            return
        info = {"epoch": row["epoch"], "global_step": row["global_step"], "metric": self.monitor.metric,
                "value": row.get(self.monitor.metric)}
        data = serialize(self.snapshot() if self.snapshot is not None else fit_checkpoint(run))
        if self.monitor.improved:
            self.checkpoints.save("best.pt", data, **info)
        self.checkpoints.save("last.pt", data, **info)
        if self.save_every and row["epoch"] % self.save_every == 0:
            self.checkpoints.save(f"epoch-{row['epoch']:04d}.pt", data, **info)
            self.checkpoints.prune_periodic(self.keep)
        self._top(f"top-epoch-{row['epoch']:04d}.pt", data, info)

    def on_validation_end(self, run, row):
        if not self.is_main or not (self.monitor.improved or self.keep_top):
            return
        # epoch: the epochs complete (as every checkpoint counts them); the state holds the step
        info = {"epoch": run.state.epoch, "global_step": row["global_step"], "metric": self.monitor.metric,
                "value": row.get(self.monitor.metric), "partial_epoch": True}
        data = None
        if self.monitor.improved:
            data = serialize(self.snapshot() if self.snapshot is not None else fit_checkpoint(run))
            self.checkpoints.save("best.pt", data, **info)
        self._top(f"top-step-{row['global_step']:08d}.pt", data, info, run)

    def _top(self, name: str, data: bytes | None, info: dict, run=None) -> None:
        """`name` joins the top files when its value is among the `keep_top` best; then the
        worst beyond K go, once the new file verifies (the manifest's crash-safety rules)."""
        if not self.keep_top:
            return
        metric, mode = self.monitor.metric, self.monitor.mode
        if self.checkpoints.enters_top(self.keep_top, metric, mode, info["value"]):
            if data is None:
                data = serialize(self.snapshot() if self.snapshot is not None else fit_checkpoint(run))
            self.checkpoints.save(name, data, **info)
            self.checkpoints.prune_top(self.keep_top, metric, mode, new=name)
        else:  # (a crash after an earlier save left K+1: pruned here)
            self.checkpoints.prune_top(self.keep_top, metric, mode)


class TensorBoardLog(Callback):
    """Per-epoch scalars, the train loss every `every` steps, the run's `hparams` (its config:
    TensorBoard's hyper-parameter view), and the final confusion matrix as an image, in
    `folder` (rank 0)."""
    order = 75
    state_key = "tensorboard"

    def __init__(self, folder: str | Path, is_main: bool = True, every: int = 0, hparams: dict | None = None):
        self.folder, self.is_main, self.hparams = Path(folder), is_main, hparams
        self.window = StepLoss(every)
        self.writer = None

    def on_fit_start(self, run):
        if self.is_main and self.writer is None:
            # (tensorboard is an optional package, imported only when a run asks for it)
            from trainlab.training.tensorboard import TensorBoardLogger

            self.writer = TensorBoardLogger(self.folder)
            if self.hparams:
                self.writer.log_hparams(self.hparams)

    def on_step_end(self, run):
        point = self.window.add(run.state) if self.writer is not None else None
        if point is not None:
            self.writer.log_step(*point)

    def state_dict(self) -> dict:
        return {"window": self.window.state_dict()} if self.is_main else {}

    def load_state_dict(self, state: dict) -> None:
        self.window.load_state_dict(state.get("window") if isinstance(state, dict) else None)

    def on_epoch_end(self, run, row):
        if self.writer is not None:
            self.writer.log_epoch(row)

    def log_confusion(self, confusion, classes, step: int) -> None:
        if self.writer is not None:
            self.writer.log_confusion(confusion, classes, step=step)

    def log_final_test(self, accuracy: float, step: int) -> None:
        """The run's one test accuracy (of the model kept), once."""
        if self.writer is not None:
            self.writer.writer.add_scalar("acc/test_final", accuracy, step)
            self.writer.writer.flush()

    def on_fit_end(self, run):
        if self.writer is not None:
            self.writer.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Console(Callback):
    """One line per epoch, on rank 0 (the progress bar itself is the loop's); `monitor` marks the
    best epochs."""
    order = 90

    def __init__(self, monitor: "BestAndEarlyStop | None" = None, is_main: bool = True):
        self.monitor, self.is_main = monitor, is_main

    def on_epoch_end(self, run, row):
        if not self.is_main:
            return
        nan = float("nan")
        # the test split shows only when it was evaluated on request, and says it is not for choosing
        test = f" | test acc {row['test_acc']:.4f} (not for selection)" if "test_acc" in row else ""
        log.info("epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f%s | %.1fs%s",
                 row["epoch"], run.state.epochs, row["train_loss"], row["train_acc"], row.get("val_loss", nan),
                 row.get("val_acc", nan), test, row["train_seconds"],
                 "  *best" if self.monitor is not None and self.monitor.improved else "")

    def on_validation_end(self, run, row):
        if self.is_main:
            log.info("epoch %d/%d step %d  val loss %.4f acc %.4f%s", row["epoch"], run.state.epochs, row["step"],
                     row.get("val_loss", float("nan")), row.get("val_acc", float("nan")),
                     "  *best" if self.monitor is not None and self.monitor.improved else "")


_BUILTIN = (BestAndEarlyStop, MetricsLog, CheckpointWriter, TensorBoardLog, Console)
