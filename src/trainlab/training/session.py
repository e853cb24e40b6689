"""A training session: everything one run needs, built from its config, saved and restored
as one checkpoint, so a run can be stopped at any moment and resumed exactly.

train() and resume() in trainlab.api are thin wrappers around Session.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainlab import models
from trainlab.config import Config, load_toml, resolve
from trainlab.data import Dataset, DeviceLoader, load_dataset, stratified_split
from trainlab.devices import describe_device, pick_device
from trainlab.errors import ConfigError, TrainlabError
from trainlab.inference import EVAL_BATCH, predict
from trainlab.metrics import summarize
from trainlab.store import runs
from trainlab.store.atomic import remove_stale_temps
from trainlab.store.checkpoint import (
    CheckpointDir,
    CheckpointError,
    check_fields,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)
from trainlab.store.runs import CHECKPOINTS, WEIGHTS_FILE
from trainlab.training import distributed
from trainlab.training.ema import make_ema
from trainlab.training.loop import FitState, Instruments, NonFiniteLoss, fit
from trainlab.training.optim import build_optimizer, lr_multiplier
from trainlab.training.precision import resolve_precision

log = logging.getLogger("trainlab")

# What a resume may change, in three kinds (every config key is in exactly one):
# free: read from the config each time, they change nothing about the numbers' path;
RESUME_FREE_KEYS = {"epochs", "quiet", "name", "runs_dir", "data_dir", "device", "threads",
                    "patience", "min_delta", "save_every", "keep", "tensorboard", "compile",
                    "channels_last", "tf32", "sync_bn", "malloc_tuning"}
# changeable: they change the run from here on, so they need --allow-changes (resume --lr
# implies it); the optimizer's own values are restored from the checkpoint, so those are
# re-applied after the restore, or the override would silently do nothing;
RESUME_CHANGEABLE_KEYS = {"lr", "weight_decay", "momentum", "grad_clip", "label_smoothing",
                          "translate", "hflip", "erase", "tta_flip", "precision"}
# fixed: everything else (model, data, seed, optimizer, schedule, batch, split, monitor, EMA)
# is restored from the checkpoint or shapes its state: a change could not take effect, so
# it is refused by name; start a new run (or fork with --into) instead.


def fixed_differences(saved: dict, current: dict) -> list[str]:
    keys = (set(saved) | set(current)) - RESUME_FREE_KEYS - RESUME_CHANGEABLE_KEYS
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(keys)
            if saved.get(k) != current.get(k)]


class Interrupted(TrainlabError):
    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


# ---------------------------------------------------------------- small parts

@dataclass
class Monitor:
    """Tracks the monitored metric for best.pt and early stopping."""
    metric: str = "val_loss"
    mode: str = "min"
    patience: int = 0
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    counter: int = 0

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
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.counter >= self.patience

    def state_dict(self) -> dict:
        return {"metric": self.metric, "mode": self.mode, "patience": self.patience,
                "min_delta": self.min_delta, "best": self.best, "best_epoch": self.best_epoch,
                "counter": self.counter}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.best_epoch, self.counter = d["best"], d["best_epoch"], d["counter"]


class StopSignals:
    """Ctrl-C / SIGTERM / SIGHUP (a closed terminal, a dropped ssh) set a flag; the loop
    saves at the next step and exits 128 + the signal's number."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if s is None:
                continue
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum
        try:  # after SIGHUP the terminal may be gone: printing must not kill the save
            print(f"\ntrainlab: {signal.Signals(signum).name} received: saving a checkpoint at the "
                  "next step (press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    def __call__(self) -> bool:
        return self.signum is not None

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def host_rng_state() -> dict:
    """numpy and Python RNG states as plain values (the legacy numpy tuple is refused by
    weights_only loading; its dict form with the key array as a tensor is fine)."""
    np_state = np.random.get_state(legacy=False)
    np_state = {**np_state, "state": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                                      "pos": int(np_state["state"]["pos"])}}
    version, internal, gauss = random.getstate()
    return {"numpy": np_state, "python": [version, list(internal), gauss]}


def set_host_rng_state(state: dict) -> None:
    s = state["numpy"]
    np.random.set_state({**s, "state": {"key": s["state"]["key"].numpy().astype(np.uint32),
                                        "pos": s["state"]["pos"]}})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def resolve_mode(cfg: Config) -> str:
    if cfg.mode != "auto":
        return cfg.mode
    return "max" if cfg.monitor.endswith("acc") else "min"


def model_spec(cfg: Config, data: Dataset) -> dict:
    return {"name": cfg.model, "kwargs": dict(cfg.model_kwargs),
            "input_shape": list(data.input_shape), "num_classes": data.num_classes}


def build_model(spec: dict, allow_import=None, source: str = "the stored spec") -> nn.Module:
    """allow_import=None: a spec the user wrote now (may import what it names); a tuple:
    a spec read from disk, built through the one trust check (models.build_from_spec)."""
    if allow_import is None:
        return models.build(spec["name"], spec["input_shape"], spec["num_classes"], **spec.get("kwargs", {}))
    return models.build_from_spec(spec, allow_import, source)


def make_loaders(data: Dataset, cfg: Config, device, augment=None,
                 ctx: distributed.DistContext = distributed.DistContext()) -> dict[str, DeviceLoader]:
    """Train / val / test loaders on `device`; val is carved from the training split.

    Under DDP the training loader shards each epoch across ranks, and val/test are split
    rank::world so the ranks evaluate disjoint parts whose sums are all-reduced."""
    n_train = len(data.train_y)
    if cfg.val_size >= n_train:
        raise ConfigError(f"val_size = {cfg.val_size} is invalid: the training split has only "
                          f"{n_train} samples")
    train_idx, val_idx = stratified_split(data.train_y, cfg.val_size, cfg.seed)
    if cfg.train.batch_size > len(train_idx):
        raise ConfigError(f"batch_size = {cfg.train.batch_size} is invalid: larger than the "
                          f"{len(train_idx)} training samples")
    common = dict(mean=data.mean, std=data.std, device=device)
    r, w = ctx.rank, ctx.world_size
    loaders = {
        "train": DeviceLoader(data.train_x[train_idx], data.train_y[train_idx], cfg.train.batch_size,
                              shuffle=True, seed=cfg.seed, augment=augment, rank=r, world_size=w, **common),
        "val": DeviceLoader(data.train_x[val_idx[r::w]], data.train_y[val_idx[r::w]], EVAL_BATCH, **common),
        "test": DeviceLoader(data.test_x[r::w], data.test_y[r::w], EVAL_BATCH, **common),
    }
    # the final per-class report needs every test image in one place (rank 0)
    loaders["test_full"] = loaders["test"] if w == 1 else \
        DeviceLoader(data.test_x, data.test_y, EVAL_BATCH, **common)
    return loaders


# ---------------------------------------------------------------- the session

class Session:
    """Builds the model, optimizer, schedule, precision, EMA and loaders of one run."""

    def __init__(self, cfg: Config, data: Dataset | None = None, *, progress: bool | None = None,
                 schedule_epochs: int | None = None, allow_import: tuple[str, ...] | None = None):
        self.cfg = cfg
        self.lock: runs.RunLock | None = None
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.dist = distributed.context()
        if not self.dist.is_main:  # one voice: rank 0 prints, logs and writes
            log.setLevel(logging.WARNING)
            progress = False
        self.device = pick_device(distributed.device_for(self.dist, cfg.device))
        if cfg.malloc_tuning and self.device.type == "cpu":
            from trainlab.training.runtime import apply_cpu_tuning

            apply_cpu_tuning()  # measured: cnn epochs up to 1.9x faster (benchmarks/RESULTS.md)
        if cfg.train.tta_flip and not cfg.train.hflip:
            log.warning("tta_flip is on but hflip is off: the model never saw mirrored images, "
                        "so averaging over them usually hurts")
        if cfg.patience and cfg.train.schedule == "onecycle" and cfg.monitor.endswith("loss"):
            # seen in the notebooks: val_loss rises while the rate is high, before the anneal
            log.warning("patience = %d with a one-cycle schedule, monitoring %s: the loss often "
                        "rises during the high-rate phase and stops the run before the schedule "
                        "anneals; monitor val_acc, raise patience, or use schedule = cosine",
                        cfg.patience, cfg.monitor)
        seed_everything(cfg.seed)
        self.data = data if data is not None else load_dataset(cfg.dataset, cfg.data_dir)
        if cfg.tf32 and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.dist.enabled and cfg.train.batch_size % self.dist.world_size:
            raise ConfigError(f"batch_size = {cfg.train.batch_size} is the global batch and must divide "
                              f"evenly across the {self.dist.world_size} processes")
        self.loaders = make_loaders(self.data, cfg, self.device, self._augment(), self.dist)
        self.spec = model_spec(cfg, self.data)
        self.model = build_model(self.spec, allow_import, "the run's config").to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            for loader in self.loaders.values():
                loader.channels_last = True
        if cfg.sync_bn:
            if not (self.dist.enabled and self.device.type == "cuda"):
                raise ConfigError("sync_bn needs DDP on CUDA GPUs (torchrun with NCCL); on the CPU "
                                  "each rank keeps its own BatchNorm statistics")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.train_model = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # Only the training forward is compiled; checkpoints always hold self.model's keys.
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.precision = resolve_precision(cfg.train.precision, self.device, cfg.model)
        self.optimizer = build_optimizer(self.model, cfg.train)
        # The schedule is planned once; extending a run keeps the plan (the final rate continues).
        self.schedule = {"epochs": schedule_epochs or cfg.train.epochs,
                         "steps_per_epoch": len(self.loaders["train"])}
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(cfg.train, self.schedule["steps_per_epoch"],
                                          self.schedule["epochs"]))
        self.scaler = self.precision.scaler(self.device)
        self.ema = make_ema(self.model, cfg.train.ema) if cfg.train.ema > 0 else None
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
        self.monitor = Monitor(cfg.monitor, resolve_mode(cfg), cfg.patience, cfg.min_delta)
        self.state = FitState()
        if progress is None:  # a bar only for a person at a terminal
            progress = not cfg.quiet and sys.stderr.isatty() and os.environ.get("CI") != "true"
        self.progress = progress
        self.run_dir: Path | None = None
        self.tb = None

    def _augment(self):
        t = self.cfg.train
        if not (t.translate or t.hflip or t.erase):
            return None
        from trainlab.data.augment import Augment

        return Augment(translate=t.translate, hflip=t.hflip, erase=t.erase)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and kept: the EMA average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def checkpoints(self) -> CheckpointDir:
        return CheckpointDir(self.run_dir / CHECKPOINTS)

    # -------------------------------------------------------- state

    def state_dict(self) -> dict:
        st = self.state
        return make_checkpoint(
            self.model, model_spec=self.spec,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            optimizer_param_names=self._param_names(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            ema=self.ema.state_dict() if self.ema is not None else None,
            precision=self.precision.name, schedule=self.schedule,
            epoch=st.epoch, global_step=st.global_step, step=st.step, partial=st.partial,
            history=st.history, best={"metric": self.monitor.metric, "value": self.monitor.best,
                                      "epoch": self.monitor.best_epoch},
            early_stopping=self.monitor.state_dict(),
            rng={"torch": torch.get_rng_state(),
                 **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
                 **host_rng_state()},
            config=self.cfg.to_dict(), recipe=self.cfg.recipe, threads=torch.get_num_threads(),
            world_size=self.dist.world_size, fingerprint=self.data.fingerprint(), classes=self.data.classes,
            mean=self.data.mean, std=self.data.std)

    def _param_names(self) -> list[str]:
        """Parameter names in the optimizer's order (its state_dict knows only indices)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names[id(p)] for g in self.optimizer.param_groups for p in g["params"]]

    def load_state_dict(self, ckpt: dict, reset_optimizer: bool = False, source: str = "the checkpoint") -> None:
        try:
            self._load_state_dict(ckpt, reset_optimizer)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            # checked fields of the wrong inner shape: a forged or foreign file
            raise CheckpointError(f"{source} does not fit this run ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200] if str(e) else ''}); it was not used") from None

    def _load_state_dict(self, ckpt: dict, reset_optimizer: bool = False) -> None:
        self.model.load_state_dict(ckpt["model"])
        if ckpt.get("ema") is not None and self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        if not reset_optimizer:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self._load_scaler(ckpt)
        else:  # the "amnesia" fork: fresh optimizer, but the schedule continues where it was
            step = ckpt["scheduler"]["last_epoch"]
            self.scheduler.last_epoch = step
            # the rates of this config's schedule at that step (a changed --lr included)
            rates = [base * fn(step) for base, fn in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
            for group, lr in zip(self.optimizer.param_groups, rates):
                group["lr"] = lr
            self.scheduler._last_lr = rates
        self.state = FitState(epoch=ckpt["epoch"], global_step=ckpt["global_step"],
                              history=list(ckpt["history"]), step=ckpt.get("step", 0),
                              partial=ckpt.get("partial"))
        self.monitor.load_state_dict(ckpt["early_stopping"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        set_host_rng_state(rng)

    def _load_scaler(self, ckpt: dict) -> None:
        saved = ckpt.get("scaler")
        if saved is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved)
        elif saved is not None:
            log.warning("resume: the checkpoint has float16 loss-scaler state but this run uses "
                        "precision %s: the scaler state is dropped", self.precision.name)
        elif self.scaler.is_enabled():
            log.warning("resume: switching to 16-mixed from %s: the loss scaler starts fresh at "
                        "65536 (the first steps may be skipped while it calibrates)",
                        ckpt.get("precision", "32"))

    def apply_overrides(self, changes: dict) -> None:
        """Make resume overrides real: the restored optimizer and scheduler would otherwise
        put the old values back (grad_clip, augmentation, precision come from the config)."""
        groups = self.optimizer.param_groups
        if "lr" in changes:
            old, new = changes["lr"]
            ratio = new / old  # the schedule's shape is kept; its peak moves
            self.scheduler.base_lrs = [b * ratio for b in self.scheduler.base_lrs]
            for g in groups:
                g["initial_lr"] = g.get("initial_lr", g["lr"]) * ratio
                g["lr"] = g["lr"] * ratio
            self.scheduler._last_lr = [g["lr"] for g in groups]
        if "weight_decay" in changes:
            groups[0]["weight_decay"] = changes["weight_decay"][1]  # group 0 decays (build_optimizer)
        if "momentum" in changes and "momentum" in groups[0]:
            for g in groups:
                g["momentum"] = changes["momentum"][1]
        for key, (old, new) in changes.items():
            log.info("resume: %s %r -> %r (in effect from the next step)", key, old, new)

    # -------------------------------------------------------- running

    def start_run_dir(self, extra_meta: dict | None = None) -> Path:
        if not self.dist.is_main:
            self.run_dir = Path(distributed.broadcast_object(None, self.dist))
            return self.run_dir
        self.run_dir = runs.create_run_dir(self.cfg)
        self.lock = runs.RunLock(self.run_dir).acquire()  # before any file is written in it
        distributed.broadcast_object(str(self.run_dir), self.dist)
        from trainlab.training.runtime import malloc_tuning_state

        runs.write_run_header(self.run_dir, self.cfg, {"world_size": self.dist.world_size,
            "malloc_tuning": malloc_tuning_state(),
            "device": describe_device(self.device), "precision": self.precision.name,
            "precision_reason": self.precision.reason, "data_source": self.data.source,
            "data_fingerprint": self.data.fingerprint(), "classes": self.data.classes,
            "model_spec": self.spec, "parameters": models.count_parameters(self.model),
            **(extra_meta or {})})
        return self.run_dir

    def _on_epoch_end(self, state: FitState) -> bool:
        row = state.history[-1]
        value = row.get(self.monitor.metric)
        if value is None or not math.isfinite(value):
            raise TrainlabError(f"the monitored metric {self.monitor.metric} is missing or not "
                                f"finite at epoch {state.epoch} (the weights diverged): "
                                f"{self._divergence_advice()}")
        # Every rank sees the same all-reduced metrics, so all take the same decision here.
        improved = self.monitor.update(value, state.epoch)
        if not self.dist.is_main:
            return self.monitor.should_stop
        runs.append_metrics(self.run_dir, row)
        if self.tb is not None:
            self.tb.log_epoch(row)
        info = {"epoch": state.epoch, "global_step": state.global_step,
                "metric": self.monitor.metric, "value": value}
        ckpt = self.state_dict()
        # best first: if a crash lands inside the last.pt write, a verified best.pt of this
        # same epoch is still there to resume from.
        if improved:
            self.checkpoints.save("best.pt", ckpt, **info)
        self.checkpoints.save("last.pt", ckpt, **info)
        if self.cfg.save_every and state.epoch % self.cfg.save_every == 0:
            self.checkpoints.save(f"epoch-{state.epoch:04d}.pt", ckpt, **info)
            self.checkpoints.prune_periodic(self.cfg.keep)
        if not self.cfg.quiet:
            log.info("epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | test acc %.4f"
                     " | %.1fs%s", row["epoch"], self.cfg.train.epochs, row["train_loss"],
                     row["train_acc"], row.get("val_loss", float("nan")), row.get("val_acc", float("nan")),
                     row.get("test_acc", float("nan")), row["train_seconds"], "  *best" if improved else "")
        if self.monitor.should_stop:
            log.info("early stopping: %s has not improved by more than %g for %d epochs "
                     "(best %.4f at epoch %d)", self.monitor.metric, self.monitor.min_delta,
                     self.monitor.patience, self.monitor.best, self.monitor.best_epoch)
            return True
        return False

    def run(self) -> "TrainResult":
        if self.cfg.tensorboard and self.dist.is_main:
            from trainlab.training.tensorboard import TensorBoardLogger

            self.tb = TensorBoardLogger(self.run_dir)
        log.info("run: %s | model %s (%s parameters) | recipe %s | precision %s (%s) | device %s",
                 self.run_dir, self.cfg.model, f"{models.count_parameters(self.model):,}",
                 self.cfg.recipe, self.precision.name, self.precision.reason, describe_device(self.device))
        signals = StopSignals()
        inst = Instruments(scheduler=self.scheduler, scaler=self.scaler if self.scaler.is_enabled() else None,
                           precision=self.precision, ema=self.ema, grad_clip=self.cfg.train.grad_clip,
                           seed=self.cfg.seed, rank=self.dist.rank, should_stop=signals)
        if self.dist.enabled:
            # all ranks stop at the same step; a partial epoch is redone on resume
            inst.should_stop = lambda: distributed.any_rank(signals(), self.device)
            inst.reduce = distributed.all_reduce_sum
            inst.before_eval = self._sync_for_eval
            inst.partial_ok = False
        with signals:
            try:
                state = fit(self.train_model, self.optimizer, self.loaders["train"], epochs=self.cfg.train.epochs,
                            val_loader=self.loaders["val"], test_loader=self.loaders["test"],
                            loss_fn=self.loss_fn, inst=inst, state=self.state,
                            on_epoch_end=self._on_epoch_end, progress=self.progress,
                            eval_model=self.eval_model, tta_flip=self.cfg.train.tta_flip)
            except NonFiniteLoss as e:
                e.args = (f"{e}: {self._divergence_advice()}",)  # still a NonFiniteLoss for callers
                raise
        if state.stopped == "interrupt":
            self._save_interrupt(signals.signum)
        if self.cfg.patience > 0:
            distributed.barrier(self.dist)  # rank 0 has finished writing best.pt
            self._restore_best()
        return self.finish()

    def _divergence_advice(self) -> str:
        """A command that works: the rate a tenth, from the best checkpoint when there is one
        (last.pt may already hold diverging weights), applied to the restored optimizer."""
        lower = f"{self.cfg.train.lr / 10:.3g}"
        run = shlex.quote(str(self.run_dir))
        best = self.run_dir is not None and self.checkpoints.verify("best.pt") is None
        return (f"continue with trainlab resume {run} {'--from best.pt ' if best else ''}--lr {lower} "
                "(or --grad-clip 1.0)")

    def _sync_for_eval(self) -> None:
        distributed.broadcast_buffers(self.model)
        if self.ema is not None:
            distributed.broadcast_buffers(self.ema)

    def _save_interrupt(self, signum: int):
        if not self.dist.is_main:
            raise Interrupted(signum, f"{signal.Signals(signum).name}: rank {self.dist.rank} stopped")
        if self.state.step and self.state.partial is None:  # DDP: no mid-epoch state
            raise Interrupted(signum, f"{signal.Signals(signum).name}: stopped in epoch "
                                      f"{self.state.epoch + 1}, which will be redone; continue with: "
                                      f"trainlab resume {shlex.quote(str(self.run_dir))}")
        if self.state.step:  # mid-epoch: the epoch-end checkpoint is older, save this point
            self.checkpoints.save("last.pt", self.state_dict(), epoch=self.state.epoch,
                                  global_step=self.state.global_step, metric=self.monitor.metric,
                                  value=None, partial_epoch=True)
        where = (f"epoch {self.state.epoch + 1}, step {self.state.step}" if self.state.step
                 else f"the end of epoch {self.state.epoch}")
        raise Interrupted(signum, f"{signal.Signals(signum).name}: stopped at {where} and saved a "
                                  f"checkpoint; continue with: trainlab resume {shlex.quote(str(self.run_dir))}")

    def _restore_best(self) -> None:
        best = self.run_dir / CHECKPOINTS / "best.pt"
        problem = self.checkpoints.verify("best.pt")
        if problem:
            log.warning("early stopping: best.pt is unusable (%s); keeping the final weights", problem)
            return
        ckpt = load_checkpoint(best, map_location=self.device)
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        log.info("restored the best weights from %s (epoch %d, %s %.4f)", best, ckpt["epoch"],
                 self.monitor.metric, ckpt["best"]["value"])

    def finish(self) -> "TrainResult":
        if self.dist.enabled:
            self._sync_for_eval()
            if not self.dist.is_main:
                results = distributed.broadcast_object(None, self.dist)
                return TrainResult(self.run_dir, self.cfg, self.state.history, results["test"],
                                   describe_device(self.device), results)
        # in float32, as `trainlab evaluate` and load_model() users will recompute it
        logits, labels = predict(self.eval_model, self.loaders["test_full"], self.cfg.train.tta_flip)
        test = summarize(logits, labels, self.data.classes)
        save_checkpoint(self.run_dir / WEIGHTS_FILE, make_checkpoint(
            self.eval_model, model_spec=self.spec, classes=self.data.classes, mean=self.data.mean,
            std=self.data.std, config=self.cfg.to_dict(), epoch=self.state.epoch,
            global_step=self.state.global_step, fingerprint=self.data.fingerprint(),
            best={"metric": self.monitor.metric, "value": self.monitor.best,
                  "epoch": self.monitor.best_epoch}))
        hist = self.state.history
        results = {"test": test, "test_split": self.data.test_split, "epochs": self.state.epoch, "device": describe_device(self.device),
                   "precision": self.precision.name, "stopped": self.state.stopped,
                   "best": {"metric": self.monitor.metric, "value": self.monitor.best,
                            "epoch": self.monitor.best_epoch},
                   "seconds_per_epoch": sum(r["train_seconds"] for r in hist) / max(1, len(hist)),
                   "total_seconds": sum(r["seconds"] for r in hist)}
        runs.write_json(self.run_dir / runs.RESULTS_FILE, results)
        distributed.broadcast_object(results, self.dist)
        if self.tb is not None:
            self.tb.log_confusion(test["confusion_matrix"], self.data.classes, step=self.state.epoch)
            self.tb.close()
        return TrainResult(self.run_dir, self.cfg, hist, test, describe_device(self.device), results)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


@dataclass
class TrainResult:
    run_dir: Path
    config: Config
    history: list[dict]
    test: dict  # metrics.summarize() of the final model on the test split
    device: str
    results: dict

    @property
    def test_accuracy(self) -> float:
        return self.test["accuracy"]


# ---------------------------------------------------------------- entry points

def train(config: Config | dict | None = None, *, data: Dataset | None = None,
          progress: bool | None = None) -> TrainResult:
    """Train one run as configured; returns the history and the final test summary."""
    cfg = resolve(config.to_dict()) if isinstance(config, Config) else resolve(config or {})  # validated either way
    session = Session(cfg, data, progress=progress)
    session.start_run_dir()
    try:
        return session.run()
    finally:
        session.release()


def _damaged(path, e: Exception) -> TrainlabError:
    return TrainlabError(f"{path} is damaged or was not written by trainlab ({e}); it was not used")


def _read_run_config(run_dir: Path) -> dict:
    try:
        return load_toml(run_dir / runs.CONFIG_FILE)
    except ConfigError as e:  # the run's own file, not the user's command line: exit 1
        raise _damaged(run_dir / runs.CONFIG_FILE, e) from None


def _choose_checkpoint(run_dir, ckpt_dir: CheckpointDir, folder_cfg: dict, lock, into, from_checkpoint) -> dict:
    """{"name": the checkpoint to resume from} or {"name": None}: start over (no checkpoint
    verifies). Only the lock holder cleans temporaries and repairs the manifest."""
    if lock is not None:
        for folder in (run_dir, ckpt_dir.folder):
            remove_stale_temps(folder)  # left by a process killed mid-write
        ckpt_dir.recover()  # entries lost or malformed: rebuilt from the files that load
    if from_checkpoint is not None:
        name, _ = _rewind(ckpt_dir, from_checkpoint, in_place=into is None,
                          validate=lambda p: _usable_checkpoint(p, run_dir, folder_cfg))
        return {"name": name}
    candidates = ckpt_dir.verified()
    if not candidates:
        if into is not None:
            raise TrainlabError(f"{run_dir} has no verified checkpoint to fork from")
        return {"name": None}
    problems = []
    for name, _ in candidates:  # the newest that loads, passes the schema and belongs here
        try:
            _usable_checkpoint(run_dir / CHECKPOINTS / name, run_dir, folder_cfg)
            return {"name": name}
        except TrainlabError as e:
            problems.append(str(e))
            log.warning("resume: %s", e)
    # never restart over verified files: they are left exactly as they are
    raise TrainlabError(f"no checkpoint in {ckpt_dir.folder} can be used ({problems[0]}); nothing was changed")


def _usable_checkpoint(path: Path, run_dir: Path, folder_cfg: dict) -> dict:
    ckpt = check_fields(load_checkpoint(path, map_location="cpu"), path, training=True)
    try:
        resolve(ckpt["config"])
    except ConfigError as e:
        raise _damaged(path, e) from None
    # the checkpoint must belong to this folder: another run's file (re-hashed) is refused
    foreign = fixed_differences(folder_cfg, ckpt["config"])
    if foreign:
        raise TrainlabError(f"{path} does not belong to the run in {run_dir}: its config.toml and the "
                            f"checkpoint disagree on {'; '.join(foreign)}; it was not used")
    return ckpt


def _changes(saved: dict, cfg: Config, allow_changes: bool, what: str) -> dict:
    """{key: (old, new)} of the changeable keys; refuses fixed ones by name."""
    current = cfg.to_dict()
    fixed = fixed_differences(saved, current)
    if fixed:
        raise ConfigError(f"{what} cannot change {'; '.join(fixed)}: these are restored from the "
                          "checkpoint or shape its state, so the change could not take effect; "
                          "start a new run with trainlab train instead")
    changes = {k: (saved.get(k), current.get(k)) for k in sorted(RESUME_CHANGEABLE_KEYS)
               if saved.get(k) != current.get(k)}
    if "momentum" in changes and current.get("optimizer") != "sgd":
        raise ConfigError(f"momentum cannot change on resume with optimizer = {current.get('optimizer')!r}: "
                          "only sgd uses it, so the change would do nothing")
    if changes and not allow_changes:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        raise ConfigError(f"resuming with a changed config would not continue the same run: {shown}; "
                          "pass --allow-changes to do it anyway")
    return changes


def resume(run_dir: str | Path, *, epochs: int | None = None, into: str | Path | None = None,
           reset_optimizer: bool = False, allow_changes: bool = False, data: Dataset | None = None,
           overrides: dict | None = None, progress: bool | None = None,
           allow_import: tuple[str, ...] = (), from_checkpoint: str | None = None,
           allow_data_change: bool | None = None) -> TrainResult:
    """Continue a run from its newest verified checkpoint (or fork it `into` a new folder).

    Overrides (e.g. {"lr": 1e-4}) take effect from the next step, are recorded in
    metrics.jsonl, or are refused by name. A model named by import path in the run's files
    is built only if its module is in `allow_import`. `from_checkpoint` (e.g. "best.pt")
    rewinds to that checkpoint instead of the newest; newer ones are set aside, not deleted.
    `allow_data_change` (default: `allow_changes`) accepts data that differs from the
    checkpoint's; the CLI waives it only for an explicit --allow-changes."""
    run_dir = Path(run_dir)
    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise TrainlabError(f"{run_dir} holds no {runs.CONFIG_FILE}: it is not a trainlab run folder, "
                            "or its run was stopped before it started; start it again with trainlab train")
    dist_ctx = distributed.context()
    lock = runs.RunLock(run_dir).acquire() if into is None and dist_ctx.is_main else None
    try:
        return _resume_locked(run_dir, epochs, into, reset_optimizer, allow_changes, data,
                              dict(overrides or {}), progress, tuple(allow_import or ()), lock, from_checkpoint,
                              allow_changes if allow_data_change is None else allow_data_change)
    finally:
        if lock is not None:
            lock.release()


def _resume_locked(run_dir, epochs, into, reset_optimizer, allow_changes, data, overrides, progress,
                   allow_import, lock, from_checkpoint=None, allow_data_change=False) -> TrainResult:
    ckpt_dir = CheckpointDir(run_dir / CHECKPOINTS)
    folder_cfg = _read_run_config(run_dir)
    ctx = distributed.context()
    # Rank 0 alone cleans, repairs and chooses; the other ranks follow its choice (under DDP
    # a rank deciding on its own could restart over checkpoints rank 0 is recovering).
    decision = None
    if ctx.is_main:
        try:
            decision = _choose_checkpoint(run_dir, ckpt_dir, folder_cfg, lock, into, from_checkpoint)
        except TrainlabError as e:
            distributed.broadcast_object({"error": str(e), "code": e.exit_code}, ctx)
            raise
    decision = distributed.broadcast_object(decision, ctx)
    if "error" in decision:
        err = TrainlabError(decision["error"])
        err.exit_code = decision["code"]
        raise err
    if decision["name"] is None:
        return _restart(run_dir, folder_cfg, epochs, overrides, allow_changes, data, progress, allow_import)
    name = decision["name"]
    path = run_dir / CHECKPOINTS / name
    ckpt = _usable_checkpoint(path, run_dir, folder_cfg)
    saved_cfg = ckpt["config"]
    # an override recorded in config.toml whose first save never came (a kill): applied again
    pending = {k: folder_cfg[k] for k in RESUME_CHANGEABLE_KEYS
               if k in folder_cfg and folder_cfg[k] != saved_cfg.get(k) and k not in overrides}
    if pending:
        log.warning("resume: re-applying the override(s) recorded in config.toml: %s",
                    ", ".join(f"{k} = {v!r}" for k, v in sorted(pending.items())))
        overrides = {**pending, **overrides}
        allow_changes = True
    values = {**saved_cfg, **overrides}
    if epochs is not None:
        values["epochs"] = epochs
    if into is not None:
        into = Path(into)
        values["runs_dir"], values["name"] = str(into.parent), into.name
    cfg = resolve(values, origin="resume")
    if cfg.train.epochs < ckpt["epoch"]:
        raise ConfigError(f"epochs = {cfg.train.epochs} is less than the {ckpt['epoch']} epochs "
                          "already trained")
    changes = _changes(saved_cfg, cfg, allow_changes, "resume")
    threads = cfg.threads or torch.get_num_threads()
    if threads != ckpt.get("threads"):
        log.warning("resume: %d threads now vs %s when saved: results will not be bitwise equal "
                    "to an uninterrupted run", threads, ckpt.get("threads"))
    session = Session(cfg, data, progress=progress, schedule_epochs=ckpt["schedule"]["epochs"],
                      allow_import=allow_import)
    changed = _fingerprint_changes(ckpt.get("fingerprint", {}), session.data.fingerprint())
    if changed and not allow_data_change:
        raise ConfigError(f"the data differs from the checkpoint's ({'; '.join(changed)}); "
                          "pass --allow-changes to resume on it anyway")
    if ckpt["model_spec"] != session.spec:
        raise TrainlabError(f"{path}: its model ({ckpt['model_spec']}) differs from the one this run "
                            f"builds ({session.spec}); it was not used")
    saved_world = ckpt.get("world_size", 1)
    if saved_world != session.dist.world_size:
        if ckpt.get("step"):
            raise ConfigError(f"{name} was saved in the middle of an epoch by {saved_world} process(es); "
                              f"resume it with the same number of processes, not {session.dist.world_size}")
        log.info("resume: world size %d -> %d (the batch size is global: same steps, same schedule)",
                 saved_world, session.dist.world_size)
    session.load_state_dict(ckpt, reset_optimizer=reset_optimizer, source=str(path))
    session.apply_overrides({} if reset_optimizer else changes)  # a fresh optimizer has the new values
    event = {"event": "override", "epoch": ckpt["epoch"],
             "changes": {k: [a, b] for k, (a, b) in changes.items()}} if changes else None
    if into is None:
        session.run_dir = run_dir
        session.lock = lock  # released by resume()
        if session.dist.is_main:
            runs.truncate_metrics(run_dir, ckpt["epoch"], {"event": "resume", "from": name,
                                                           "epoch": ckpt["epoch"], "step": ckpt.get("step", 0),
                                                           "global_step": ckpt["global_step"],
                                                           "world_size": session.dist.world_size})
            if changes:
                runs.write_config(run_dir, cfg)  # the folder's config says what runs from now on
                runs.append_metrics(run_dir, event)
    else:
        session.start_run_dir({"parent": {"run": str(run_dir), "checkpoint": name, "epoch": ckpt["epoch"],
                                          "reset_optimizer": reset_optimizer}})
        if session.dist.is_main:
            for row in session.state.history:
                runs.append_metrics(session.run_dir, row)
            runs.append_metrics(session.run_dir, {"event": "fork", "from": str(run_dir),
                                                  "epoch": ckpt["epoch"], "reset_optimizer": reset_optimizer})
            if changes:
                runs.append_metrics(session.run_dir, event)
    where = f"epoch {ckpt['epoch']}" + (f", step {ckpt['step']}" if ckpt.get("step") else "")
    log.info("resume: %s from %s (%s)%s", session.run_dir, name, where,
             " with a fresh optimizer" if reset_optimizer else "")
    try:
        return session.run()
    finally:
        if into is not None:
            session.release()


def _rewind(ckpt_dir: CheckpointDir, name: str, in_place: bool, validate):
    """The named checkpoint, verified and usable (checked before anything moves); in place,
    checkpoints as new as it or newer are set aside, never deleted."""
    from trainlab.store.checkpoint import valid_name

    if not valid_name(name):
        raise ConfigError(f"--from {name!r} is not a checkpoint file name (e.g. best.pt, epoch-0003.pt)")
    problem = ckpt_dir.verify(name)
    if problem:
        raise TrainlabError(f"--from {name}: {ckpt_dir.folder / name} cannot be used ({problem})")
    validate(ckpt_dir.folder / name)
    entry = ckpt_dir.entry(name)
    if in_place:
        step = entry.get("global_step", -1)
        newer = [n for n in ckpt_dir.files_here() if n != name
                 and (ckpt_dir.entry(n) or {}).get("global_step", -1) >= step]
        if newer:
            ckpt_dir.set_aside(newer, "superseded")
    return name, entry


def _restart(run_dir: Path, values: dict, epochs, overrides: dict, allow_changes: bool, data, progress,
             allow_import) -> TrainResult:
    """No verified checkpoint (killed during the very first save): train again in place.
    Files that do not verify are moved aside, never overwritten; overrides apply as on resume."""
    try:
        saved = resolve(values).to_dict()
    except ConfigError as e:
        raise _damaged(run_dir / runs.CONFIG_FILE, e) from None
    merged = {**values, **overrides}
    if epochs is not None:
        merged["epochs"] = epochs
    cfg = resolve(merged, origin="resume")
    changes = _changes(saved, cfg, allow_changes, "resume")
    ckpt_dir = CheckpointDir(run_dir / CHECKPOINTS)
    if distributed.context().is_main:  # rank 0 alone moves files
        ckpt_dir.set_aside_unusable()
    log.warning("resume: %s has no verified checkpoint; starting the run over from epoch 0", run_dir)
    session = Session(cfg, data, progress=progress, allow_import=allow_import)
    session.run_dir = run_dir
    if session.dist.is_main:
        old = run_dir / runs.METRICS_FILE
        if old.is_file() and old.stat().st_size:  # earlier rows kept aside, not erased
            os.replace(old, run_dir / f"metrics-before-restart-{int(os.path.getmtime(old))}.jsonl")
        runs.write_config(run_dir, cfg)
        runs.truncate_metrics(run_dir, 0, {"event": "restart", "epoch": 0})
        if changes:
            runs.append_metrics(run_dir, {"event": "override", "epoch": 0,
                                          "changes": {k: [a, b] for k, (a, b) in changes.items()}})
    return session.run()


def _fingerprint_changes(saved: dict, current: dict) -> list[str]:
    return [f"{k}: {str(saved.get(k))[:12]} -> {str(current.get(k))[:12]}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
