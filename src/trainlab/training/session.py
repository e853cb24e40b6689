"""A training session: one run's parts built from its config, its callbacks, and its run
folder. Builders return the parts (training.build); this module assigns them, and nothing
outside it assigns a session's attributes. The checkpoint is composed from the stateful parts
(training.state); training.start starts a run, training.resume continues one."""

from __future__ import annotations

import logging
import shlex
import signal
from pathlib import Path

import torch
from torch import nn

from trainlab import models
from trainlab.config import Config
from trainlab.data import Dataset, data_options, load_dataset
from trainlab.data.batch_transforms import check_transforms
from trainlab.devices import describe_device, pick_device
from trainlab.inference import summarize_model
from trainlab.store import runs
from trainlab.store.checkpoint import make_checkpoint, save_checkpoint
from trainlab.store.manifest import CheckpointDir
from trainlab.store.schema import load_checkpoint
from trainlab.training import build, distributed, runtime
from trainlab.training.advice import divergence_advice
from trainlab.training.callbacks import (
    BestAndEarlyStop,
    Callback,
    CallbackList,
    CheckpointWriter,
    Console,
    MetricsLog,
    TensorBoardLog,
)
from trainlab.training.loop import NonFiniteLoss, StepParts, fit
from trainlab.training.result import TrainResult, resume_point, tested_model
from trainlab.training.run import FitState
from trainlab.training.schedules import continue_schedule
from trainlab.training.signals import Interrupted, StopOnSignal
from trainlab.training.trackers import from_config as tracker_from_config
from trainlab.training.state import (
    LOOP,
    OPTIMIZATION,
    CallbackStates,
    RandomState,
    ScalerState,
    compose,
    param_names,
    restore,
    seed_everything,
)

log = logging.getLogger("trainlab")

DDP_SIGNAL_POLL = 25  # steps between the all-reduces that tell every rank about a signal
MONITOR_KEY = BestAndEarlyStop.state_key  # the monitor's state: a checkpoint part of its own


class Session:
    """One run: its model, optimizer, schedule, precision, EMA, loaders and callbacks.

    `schedule_epochs` (a resume): the epochs the schedule was planned for, from the checkpoint;
    `weights_bound` (a resume): the checkpoint's weights, so a spec larger than they are is
    refused unbuilt; `model`: train(model=...)'s module or factory, given in memory."""

    def __init__(self, cfg: Config, data: Dataset | None = None, *, progress: bool | None = None,
                 schedule_epochs: int | None = None, allow_import: tuple[str, ...] | None = None,
                 callbacks: list[Callback] = (), weights_bound: dict | None = None, model=None, transforms=()):
        self.cfg = cfg
        self.dist = distributed.context()
        if not self.dist.is_main:  # one voice: rank 0 prints, logs and writes
            log.setLevel(logging.WARNING)
            progress = False
        self.progress = not cfg.quiet and progress is not False
        self.device = pick_device(distributed.device_for(self.dist, cfg.device))
        self.data = data if data is not None else load_dataset(cfg.dataset, cfg.data_dir, **data_options(cfg.to_dict()))
        build.check_run(cfg, self.data, self.dist, self.device)  # before any side effect
        runtime.apply_process_settings(cfg, self.device)
        seed_everything(cfg.seed)
        self.loaders = build.make_loaders(self.data, cfg, self.device, build.build_augment(cfg, self.data), self.dist)
        # the recipe's batch transforms (mixup, cutmix), then the caller's: applied by fit() per batch
        self.transforms = (*build.build_batch_transforms(cfg, self.data), *check_transforms(transforms))
        self.spec = build.model_spec(cfg, self.data)
        parts, self.finetune = build.build_parts(
            cfg, self.spec, self.data, self.device, self.dist, len(self.loaders["train"]),
            schedule_epochs=schedule_epochs, given=model, allow_import=allow_import, weights_bound=weights_bound)
        self.model, self.train_model, self.precision = parts.model, parts.train_model, parts.precision
        self.optimizer, self.schedule, self.scheduler = parts.optimizer, parts.schedule, parts.scheduler
        self.scaler, self.ema, self.loss_fn = parts.scaler, parts.ema, parts.loss_fn
        self.class_balance = parts.class_balance  # recorded in meta.json and results.json
        if cfg.channels_last:  # the batches in the model's memory format
            for loader in self.loaders.values():
                loader.channels_last = True
        self.state = FitState()
        self.monitor = BestAndEarlyStop(cfg.monitor, build.resolve_mode(cfg), cfg.patience, cfg.min_delta,
                                        advice=self._divergence_advice)
        self.signals = StopOnSignal(every=DDP_SIGNAL_POLL if self.dist.enabled else 1, ctx=self.dist,
                                    device=self.device)
        # the callbacks with state now (a resume loads them before the run has its folder); the
        # folder's writers join in attach()
        # (the plateau schedule is a callback: its state rides with the callbacks' in every checkpoint)
        self.user_callbacks = [*([self.finetune] if self.finetune else []),
                               *([parts.plateau] if parts.plateau is not None else []), *callbacks]
        # the MLflow tracker (track = ...): its run id is state, so it is here before a resume loads
        self.tracker = tracker_from_config(cfg, self.dist.is_main)
        if self.tracker is not None:
            self.user_callbacks.append(self.tracker)
        self.callbacks = CallbackList([self.monitor, self.signals, *self.user_callbacks])
        self.tensorboard: TensorBoardLog | None = None
        self.run_dir: Path | None = None
        self.lock: runs.RunLock | None = None
        self.resumed: dict | None = None  # {"from", "epoch", "lr"} when resumed (the divergence advice reads it)
        self.tested: dict | None = None  # {"weights": "best", "epoch"} once early stopping restored the best

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and kept: the EMA average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    # -------------------------------------------------------- the checkpoint, composed

    def _parts(self) -> dict:
        """The run's stateful parts by checkpoint key, in the order a resume loads them."""
        return {"ema": self.ema, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": ScalerState(self.scaler, self.precision.name), LOOP: self.state,
                MONITOR_KEY: self.monitor, "callbacks": CallbackStates(self.callbacks, skip=(MONITOR_KEY,)),
                "rng": RandomState()}

    def state_dict(self) -> dict:
        """The checkpoint of the run as it stands now."""
        return compose(self.model, self.spec, self._parts(), {
            "optimizer_param_names": param_names(self.model, self.optimizer), "precision": self.precision.name,
            "schedule": self.schedule, "best": self.monitor.summary(), "config": self.cfg.to_dict(),
            "recipe": self.cfg.recipe, "threads": torch.get_num_threads(), "world_size": self.dist.world_size,
            "fingerprint": self.data.fingerprint(), "classes": self.data.classes, "mean": self.data.mean,
            "std": self.data.std})

    def load_state_dict(self, ckpt: dict, reset_optimizer: bool = False, source: str = "the checkpoint") -> None:
        """Every part back from `ckpt`. `reset_optimizer`: a fresh optimizer, but the schedule
        continues where it was (the "amnesia" fork)."""
        restore(self.model, self._parts(), ckpt, source, skip=OPTIMIZATION if reset_optimizer else ())
        if reset_optimizer:
            continue_schedule(self.optimizer, self.scheduler, ckpt["scheduler"]["last_epoch"])

    # -------------------------------------------------------- the run folder

    def attach(self, run_dir: Path, lock: runs.RunLock | None = None, resumed: dict | None = None) -> None:
        """The run's folder (and its lock, when the caller holds it): the callbacks that write
        into it join the run. `resumed`: where a resume continues from."""
        self.run_dir, self.lock, self.resumed = Path(run_dir), lock, resumed
        main, cfg = self.dist.is_main, self.cfg
        self.checkpoints = CheckpointDir(self.run_dir / runs.CHECKPOINTS)
        writers: list[Callback] = [MetricsLog(self.run_dir, main),
                                   CheckpointWriter(self.checkpoints, self.monitor, cfg.save_every, cfg.keep, main,
                                                    snapshot=self.state_dict, keep_top=cfg.keep_top)]
        if not cfg.quiet:
            writers.append(Console(self.monitor, main))
        if cfg.tensorboard:
            self.tensorboard = TensorBoardLog(self.run_dir, main, every=cfg.log_every, hparams=cfg.to_dict())
            writers.append(self.tensorboard)
        if self.finetune is not None:
            self.finetune.attach(self.run_dir, main)
        if self.tracker is not None:
            self.tracker.attach(self.run_dir)
        self.callbacks = CallbackList([self.monitor, self.signals, *writers, *self.user_callbacks])

    def start_run_dir(self, extra_meta: dict | None = None, resumed: dict | None = None) -> Path:
        """A new run folder (rank 0 creates it and takes its lock; the others are told its path)."""
        if not self.dist.is_main:
            self.attach(Path(distributed.broadcast_object(None, self.dist)), resumed=resumed)
            return self.run_dir
        run_dir = runs.create_run_dir(self.cfg)
        lock = runs.RunLock(run_dir).acquire()  # before any file is written in it
        self.attach(run_dir, lock, resumed)
        distributed.broadcast_object(str(run_dir), self.dist)
        runs.write_run_header(run_dir, self.cfg, {
            "world_size": self.dist.world_size, "malloc_tuning": runtime.malloc_tuning_state(),
            "device": describe_device(self.device), "precision": self.precision.name,
            "precision_reason": self.precision.reason, "data_source": self.data.source,
            "data_fingerprint": self.data.fingerprint(), "classes": self.data.classes,
            "model_spec": self.spec, "parameters": models.count_parameters(self.model),
            **({"class_balance": self.class_balance} if self.class_balance else {}), **(extra_meta or {})})
        return run_dir

    def run(self) -> "TrainResult":
        log.info("run: %s | model %s (%s) | recipe %s | precision %s (%s) | device %s",
                 self.run_dir, self.cfg.model, self._parameter_counts(),
                 self.cfg.recipe, self.precision.name, self.precision.reason, describe_device(self.device))
        parts = StepParts(scheduler=self.scheduler, scaler=self.scaler, precision=self.precision, ema=self.ema,
                          grad_clip=self.cfg.train.grad_clip, seed=self.cfg.seed, rank=self.dist.rank,
                          accumulate=self.cfg.train.accumulate)
        if self.dist.enabled:
            parts.reduce = distributed.all_reduce_sum
            parts.before_eval = self._sync_for_eval
            parts.partial_ok = False  # all ranks stop at the same step; a partial epoch is redone
        try:
            fit(self.train_model, self.optimizer, self.loaders["train"], epochs=self.cfg.train.epochs,
                val_loader=self.loaders["val"], loss_fn=self.loss_fn,
                # the test split each epoch only when asked (an extra pass, never for selection)
                test_loader=self.loaders["test"] if self.cfg.test_every_epoch else None,
                parts=parts, state=self.state, callbacks=self.callbacks, progress=self.progress,
                eval_model=self.eval_model, tta_flip=self.cfg.train.tta_flip, run=self, transforms=self.transforms,
                val_every=self.cfg.val_every)
        except NonFiniteLoss as e:
            # still a NonFiniteLoss for callers; the loop's generic "resume from the last
            # checkpoint" gives way to the checked advice (that checkpoint may hold the NaN)
            e.args = (f"the training loss became {e.value} at epoch {e.epoch}, step {e.step} of that epoch "
                      f"(the weights diverged): {self._divergence_advice()}",)
            raise
        if self.state.stopped == "interrupt":
            self._save_interrupt(self.signals.signum)
        if self.state.step and self.dist.is_main and self.state.partial is not None:
            self._save_partial()  # a callback stopped mid-epoch: last.pt holds this point
        if self.cfg.patience > 0:
            distributed.barrier(self.dist)  # rank 0 has finished writing best.pt
            self._restore_best()
        return self.finish()

    def _parameter_counts(self) -> str:
        """"N parameters: T trainable, F frozen", as the epoch about to run has them (--freeze
        decides there, with --unfreeze-at; else each parameter's requires_grad)."""
        ft = self.finetune
        names = set(ft.frozen_names) if ft is not None and ft._frozen_at(self.state.epoch) else set()
        total = frozen = 0
        for name, p in self.model.named_parameters():
            total += p.numel()
            frozen += p.numel() if (name in names if ft is not None else not p.requires_grad) else 0
        return f"{total:,} parameters: {total - frozen:,} trainable, {frozen:,} frozen"

    def _divergence_advice(self) -> str:
        """A command that can work (training.advice): a tenth of the rate from a checkpoint whose
        weights and optimizer state are finite and that this session was not already resumed
        from, else a fresh start at that rate."""
        return divergence_advice(self.run_dir, self.cfg.train.lr, self.resumed)

    def _sync_for_eval(self) -> None:
        distributed.broadcast_buffers(self.model)
        if self.ema is not None:
            distributed.broadcast_buffers(self.ema)

    def _save_interrupt(self, signum: int):
        signum = signum or signal.SIGTERM  # (a stop without a signal number: say SIGTERM)
        name, st, again = signal.Signals(signum).name, self.state, shlex.quote(str(self.run_dir))
        if not self.dist.is_main:
            raise Interrupted(signum, f"{name}: rank {self.dist.rank} stopped")
        if st.step and st.partial is None:  # DDP: no mid-epoch state
            raise Interrupted(signum, f"{name}: stopped in epoch {st.epoch + 1}, which will be redone; "
                                      f"continue with: trainlab resume {again}")
        if st.step:  # mid-epoch: the epoch-end checkpoint is older, save this point
            self._save_partial()
        where = resume_point(st.epoch, st.step)
        raise Interrupted(signum, f"{name}: stopped at {where} and saved a checkpoint; "
                                  f"continue with: trainlab resume {again}")

    def _save_partial(self) -> None:
        st = self.state
        self.checkpoints.save("last.pt", self.state_dict(), epoch=st.epoch, global_step=st.global_step,
                              metric=self.monitor.metric, value=None, partial_epoch=True)

    def _restore_best(self) -> None:
        best = self.run_dir / runs.CHECKPOINTS / "best.pt"
        problem = self.checkpoints.verify("best.pt")
        if problem:
            log.warning("early stopping: best.pt is unusable (%s); keeping the final weights", problem)
            return
        ckpt = load_checkpoint(best, map_location=self.device)
        self.model.load_state_dict(ckpt["model"])
        # the best's own epoch (1-based): a mid-epoch best (--val-every) lies inside an epoch that
        # the checkpoint's `epoch` (epochs completed) does not count yet
        epoch = ckpt["best"].get("epoch", ckpt["epoch"])
        self.tested = {"weights": "best", "epoch": epoch}
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        log.info("restored the best weights from %s (epoch %d, %s %.4f)", best, epoch,
                 self.monitor.metric, ckpt["best"]["value"])

    def finish(self) -> "TrainResult":
        device = describe_device(self.device)
        if self.dist.enabled:
            self._sync_for_eval()
            if not self.dist.is_main:
                results = distributed.broadcast_object(None, self.dist)
                return TrainResult(self.run_dir, self.cfg, self.state.history, results["test"], device, results)
        # the one test evaluation of the run, of the model kept (chosen by validation when early
        # stopping restored the best); in float32, as `trainlab evaluate` and load_model() recompute it
        tested = tested_model(self.tested or {"weights": "last", "epoch": self.state.epoch},
                              self.monitor.metric, self.ema is not None)
        test = summarize_model(self.eval_model, self.loaders["test_full"], self.data.classes, self.cfg.train.tta_flip)
        save_checkpoint(self.run_dir / runs.WEIGHTS_FILE, make_checkpoint(
            self.eval_model, model_spec=self.spec, classes=self.data.classes, mean=self.data.mean,
            std=self.data.std, config=self.cfg.to_dict(), epoch=self.state.epoch,
            global_step=self.state.global_step, fingerprint=self.data.fingerprint(), best=self.monitor.summary()))
        hist = self.state.history
        results = {"test": test, "tested": tested, "test_split": self.data.test_split, "epochs": self.state.epoch,
                   "device": device,
                   "precision": self.precision.name, "stopped": self.state.stopped, "best": self.monitor.summary(),
                   "seconds_per_epoch": sum(r["train_seconds"] for r in hist) / max(1, len(hist)),
                   "total_seconds": sum(r["seconds"] for r in hist),
                   **({"class_balance": self.class_balance} if self.class_balance else {})}
        runs.write_json(self.run_dir / runs.RESULTS_FILE, results)
        distributed.broadcast_object(results, self.dist)
        if self.tensorboard is not None:
            self.tensorboard.log_final_test(test["accuracy"], step=self.state.epoch)
            self.tensorboard.log_confusion(test["confusion_matrix"], self.data.classes, step=self.state.epoch)
        if self.tracker is not None:  # after results.json and model.pt: they go as artifacts
            self.tracker.finish(results, step=self.state.global_step)
        return TrainResult(self.run_dir, self.cfg, hist, test, device, results)

    def release(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


