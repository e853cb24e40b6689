"""A training session: one run's parts built from its config, its callbacks, and its run
folder; train() starts one. Building is in build.py, state in state.py, resuming in
resume.py, signals in signals.py."""

from __future__ import annotations

import logging
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from trainlab import models
from trainlab.config import Config, resolve
from trainlab.data import Dataset, data_options, load_dataset
from trainlab.errors import ConfigError
from trainlab.devices import describe_device, pick_device
from trainlab.inference import summarize_model
from trainlab.store import runs
from trainlab.store.checkpoint import make_checkpoint, save_checkpoint
from trainlab.store.manifest import CheckpointDir
from trainlab.store.schema import load_checkpoint
from trainlab.training import build, distributed, finetune, memory, rerun, runtime
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
from trainlab.training.loop import FitState, NonFiniteLoss, StepParts, fit
from trainlab.training.signals import Interrupted, StopOnSignal
from trainlab.training.state import load_session_state, seed_everything, session_checkpoint

log = logging.getLogger("trainlab")

DDP_SIGNAL_POLL = 25  # steps between the all-reduces that tell every rank about a signal


class Session:
    """One run: its model, optimizer, schedule, precision, EMA, loaders and callbacks."""

    def __init__(self, cfg: Config, data: Dataset | None = None, *, progress: bool | None = None,
                 schedule_epochs: int | None = None, allow_import: tuple[str, ...] | None = None,
                 callbacks: list[Callback] = (), weights_bound: dict | None = None, model=None):
        self.lock: runs.RunLock | None = None
        self.given = model  # train(model=...): an nn.Module or a factory given in memory
        # resume: the checkpoint's weights, so a spec larger than they are is refused unbuilt
        self.weights_bound = weights_bound
        self.run_dir: Path | None = None
        self.resumed: dict | None = None  # {"from", "epoch", "lr"} when resumed (the divergence advice reads it)
        self.tested: dict | None = None  # {"weights": "best", "epoch"} once early stopping restored the best
        self.dist = distributed.context()
        if not self.dist.is_main:  # one voice: rank 0 prints, logs and writes
            log.setLevel(logging.WARNING)
            progress = False
        self.device = pick_device(distributed.device_for(self.dist, cfg.device))
        self.data = data if data is not None else load_dataset(cfg.dataset, cfg.data_dir, **data_options(cfg.to_dict()))
        self.cfg = cfg
        build.check_run(cfg, self.data, self.dist, self.device)  # before any side effect
        runtime.apply_process_settings(cfg, self.device)
        seed_everything(cfg.seed)
        self.loaders = build.make_loaders(self.data, cfg, self.device, build.build_augment(cfg), self.dist)
        self.spec = build.model_spec(cfg, self.data)
        build.build_model(self, allow_import)
        # fine-tuning (issue 15): init_from on a fresh run only (a resume passes schedule_epochs and
        # takes the weights from its checkpoint), freeze, and the Finetune callback when configured
        callbacks = finetune.setup(self, callbacks, fresh=schedule_epochs is None)
        build.build_optimization(self, schedule_epochs)
        self.state = FitState()
        self.monitor = BestAndEarlyStop(cfg.monitor, build.resolve_mode(cfg), cfg.patience, cfg.min_delta,
                                        advice=self._divergence_advice)
        self.signals = StopOnSignal(every=DDP_SIGNAL_POLL if self.dist.enabled else 1, ctx=self.dist,
                                    device=self.device)
        self.tensorboard = TensorBoardLog() if cfg.tensorboard else None
        builtin = [self.monitor, MetricsLog(), CheckpointWriter(cfg.save_every, cfg.keep), Console(), self.signals]
        self.callbacks = CallbackList(builtin + ([self.tensorboard] if self.tensorboard else []) + list(callbacks))
        self.progress = not cfg.quiet and progress is not False

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and kept: the EMA average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def checkpoints(self) -> CheckpointDir:
        return CheckpointDir(self.run_dir / runs.CHECKPOINTS)

    def state_dict(self) -> dict:
        return session_checkpoint(self)

    def load_state_dict(self, ckpt: dict, reset_optimizer: bool = False, source: str = "the checkpoint") -> None:
        load_session_state(self, ckpt, reset_optimizer, source)

    # -------------------------------------------------------- running

    def start_run_dir(self, extra_meta: dict | None = None) -> Path:
        if not self.dist.is_main:
            self.run_dir = Path(distributed.broadcast_object(None, self.dist))
            return self.run_dir
        self.run_dir = runs.create_run_dir(self.cfg)
        self.lock = runs.RunLock(self.run_dir).acquire()  # before any file is written in it
        distributed.broadcast_object(str(self.run_dir), self.dist)
        runs.write_run_header(self.run_dir, self.cfg, {
            "world_size": self.dist.world_size, "malloc_tuning": runtime.malloc_tuning_state(),
            "device": describe_device(self.device), "precision": self.precision.name,
            "precision_reason": self.precision.reason, "data_source": self.data.source,
            "data_fingerprint": self.data.fingerprint(), "classes": self.data.classes,
            "model_spec": self.spec, "parameters": models.count_parameters(self.model), **(extra_meta or {})})
        return self.run_dir

    def run(self) -> "TrainResult":
        log.info("run: %s | model %s (%s parameters) | recipe %s | precision %s (%s) | device %s",
                 self.run_dir, self.cfg.model, f"{models.count_parameters(self.model):,}",
                 self.cfg.recipe, self.precision.name, self.precision.reason, describe_device(self.device))
        parts = StepParts(scheduler=self.scheduler, scaler=self.scaler, precision=self.precision, ema=self.ema,
                          grad_clip=self.cfg.train.grad_clip, seed=self.cfg.seed, rank=self.dist.rank)
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
                eval_model=self.eval_model, tta_flip=self.cfg.train.tta_flip, run=self)
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
        self.tested = {"weights": "best", "epoch": ckpt["epoch"]}
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        log.info("restored the best weights from %s (epoch %d, %s %.4f)", best, ckpt["epoch"],
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
                   "total_seconds": sum(r["seconds"] for r in hist)}
        runs.write_json(self.run_dir / runs.RESULTS_FILE, results)
        distributed.broadcast_object(results, self.dist)
        if self.tensorboard is not None:
            self.tensorboard.log_final_test(test["accuracy"], step=self.state.epoch)
            self.tensorboard.log_confusion(test["confusion_matrix"], self.data.classes, step=self.state.epoch)
        return TrainResult(self.run_dir, self.cfg, hist, test, device, results)

    def release(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def resume_point(epoch: int, step: int) -> str:
    """The one way a point of a run is named, in the interrupt message, the resume line and the
    resume event: `epoch` epochs complete (the files' count), `step` steps into the next one."""
    return f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"


def tested_model(tested: dict, metric: str, ema: bool) -> dict:
    """Which weights the final test evaluation saw, with the words every report prints for it."""
    which = f"best {metric}" if tested["weights"] == "best" else "last"
    return {**tested, "ema": ema, "label": f"epoch {tested['epoch']} ({which})" + (", EMA weights" if ema else "")}


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


def train(config: Config | dict | None = None, *, data: Dataset | None = None, progress: bool | None = None,
          callbacks: list[Callback] = (), restart: bool = False, model=None) -> TrainResult:
    """Train one run as configured; returns the history and the final test summary.

    `callbacks` (trainlab.Callback subclasses) run around the loop and keep their state in
    every checkpoint. progress=None shows a progress bar and one line per epoch (unless the
    config says quiet); False shows nothing. A named run whose folder already holds this run
    is continued (or reported finished) instead: see training.rerun; `restart` starts it over,
    keeping the old folder aside.

    `model`: your own nn.Module, or a class or function that returns one (called with what
    trainlab knows: num_classes, in_chans / in_channels / input_shape when it takes them). An
    importable class or function is recorded as module:function, so every later command rebuilds
    it; an instance (or a local function) is recorded as instance:NAME, and evaluate_run /
    load_model / resume then take it again as model=."""
    if data is not None and not isinstance(data, Dataset):
        from torch.utils.data import DataLoader

        what = "a torch DataLoader" if isinstance(data, DataLoader) else type(data).__name__
        raise ConfigError(f"train(data=...) takes a trainlab Dataset, not {what}: make one with "
                          "trainlab.from_arrays(train_x, train_y, test_x, test_y), or train your DataLoader with "
                          "trainlab.fit(model, optimizer, loader, ...), which takes it as it is")
    values = config.to_dict() if isinstance(config, Config) else dict(config or {})
    given = None
    if model is not None:
        values["model"], given = models.given_model(model)
    cfg = resolve(values)  # validated either way
    if data is not None:  # the run records what reloads its data ("arrays:" = only data= can)
        cfg.dataset = data.spec or f"arrays:{data.name or 'arrays'}"
    try:
        return _train(cfg, data, progress, callbacks, restart, given)
    except (RuntimeError, MemoryError) as e:
        if not memory.is_out_of_memory(e):
            raise
        raise memory.out_of_memory_error(cfg.model, cfg.train.batch_size, "training", "earlier files and checkpoints are intact") from None


def _train(cfg: Config, data, progress, callbacks, restart, given=None) -> TrainResult:
    with runtime.library_output(progress, cfg.quiet):
        rerun.elastic_name(cfg)
        decision = rerun.decide(cfg, restart)
        if decision["action"] == "finished":
            return rerun.finished_result(cfg, decision)
        if decision["action"] == "resume":
            from trainlab.training.resume import resume  # (resume builds on this module)

            if distributed.context().is_main:
                log.info("re-run: %s already holds this run: continuing it from its newest checkpoint "
                         "(rerun = refuse, or --restart, to do otherwise)", decision["path"])
            own = (cfg.model.partition(":")[0],) if ":" in cfg.model else ()  # named on this command
            return resume(decision["path"], epochs=cfg.train.epochs, data=data, progress=progress,
                          callbacks=callbacks, allow_import=own, reason="rerun", model=given)
        session = Session(cfg, data, progress=progress, callbacks=callbacks, model=given)
        session.start_run_dir()
        try:
            return session.run()
        except (RuntimeError, MemoryError) as e:
            if not memory.is_out_of_memory(e):
                raise
            session.release()  # the lock first: the folder may go with it
            if session.dist.is_main and memory.discard_unstarted(session.run_dir):  # else it blocks a re-run
                kept = "it had saved no checkpoint, so its run folder was removed"
            else:
                kept = f"the checkpoints in {session.run_dir} are intact"
            raise memory.out_of_memory_error(cfg.model, cfg.train.batch_size, "training", kept) from None
        finally:
            session.release()
