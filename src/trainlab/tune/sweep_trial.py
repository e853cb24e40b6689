"""One sweep trial and the loop that runs them: ask the study for a trial (under the sweep
lock, with its claim), train it as an ordinary run, tell the study its validation score. A
trial's own failure (diverged, out of memory, config refused) fails it alone; the sweep's
(data, disk, storage, a signal) stops the loop with the trial left to be resumed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from trainlab.config import resolve
from trainlab.errors import ConfigError, TrainlabError
from trainlab.training.callbacks import Callback
from trainlab.training.loop import NonFiniteLoss
from trainlab.training.start import train
from trainlab.training.signals import Interrupted
from trainlab.tune import sweep_storage
from trainlab.tune.sweep_space import Space, _suggest, _values
from trainlab.tune.sweep_storage import TRIALS
from trainlab.tune.sweep_study import _counted, _optuna, _requeue_interrupted, _same_as, _sampler, _study

log = logging.getLogger("trainlab")


class ReportToOptuna(Callback):
    """Feeds the monitored validation metric to the study each epoch; stops a trial the
    pruner gives up on (its checkpoint and metrics stay, like any run's)."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric, self.pruned = trial, metric, False

    def on_epoch_end(self, run, row):
        self.trial.report(row[self.metric], row["epoch"])
        if self.trial.should_prune():
            self.pruned = True
            return "pruned"


class SameFailure(TrainlabError):
    """A drawn configuration that already failed: it fails again without training."""


def _trial_error(e: BaseException) -> str | None:
    """The reason when `e` is the trial's own failure (its config diverged, did not fit in memory
    or was refused); None when it is the sweep's (data, disk, storage, a signal): that stops it."""
    if isinstance(e, (KeyboardInterrupt, Interrupted)):
        return None
    if isinstance(e, SameFailure):
        return str(e)
    if isinstance(e, NonFiniteLoss) or (isinstance(e, TrainlabError) and "diverged" in str(e)):
        return f"diverged: {e}"
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)) or \
            (isinstance(e, RuntimeError) and "out of memory" in str(e).lower()):
        return f"out of memory: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
    if isinstance(e, ConfigError) and "holds a run with another config" not in str(e):
        return f"config refused: {e}"
    return None


def _objective(space: Space, out: Path, threads: int | None, data):
    optuna = _optuna()

    def objective(trial, study):
        name = trial.user_attrs["run"]
        draw = {pname: _suggest(trial, pname, spec) for pname, spec in space.params.items()}
        same = _same_as(study, trial)
        if same is not None:  # trained already: its result, not a second training
            trial.set_user_attr("same_as", same.number)
            if same.state.name == "FAIL":
                raise SameFailure(f"as trial {same.number}: {same.user_attrs.get('fail_reason', 'failed')}")
            if same.value is None:
                raise optuna.TrialPruned()
            return same.value
        folder = out / TRIALS / name
        if folder.is_symlink():
            raise sweep_storage._link_error(folder)
        values = _values(space.fixed, draw)
        values.update(name=name, runs_dir=str(out / TRIALS), quiet=True, **({"threads": threads} if threads else {}))
        cfg = resolve(values, origin=f"{space.source}: trial {trial.number} {draw}")
        report = ReportToOptuna(trial, cfg.monitor)
        # the study sees validation only: no test figure enters a trial's attributes (the winner's
        # is read from its run folder once, by summarize)
        result = train(cfg, data=data, progress=False, callbacks=[report])
        if report.pruned or result.results.get("stopped") == "pruned":
            raise optuna.TrialPruned()
        return result.results["best"]["value"]
    return objective


def run_sweep_worker(space: Space, trials: int, out: Path, threads, seed: int, data, storage: str | None = None
                     ) -> None:
    """Ask for a trial, run it, tell the result, until the study holds `trials` trials. Requeue,
    count, ask and claim happen under one file lock, so processes together (workers, a second copy
    of the command) never start more than `trials`, never the same one, and never take a live
    trial for a killed one."""
    from optuna.trial import TrialState

    optuna = _optuna()
    cfg = resolve(space.fixed)
    rdb = storage is not None
    study = _study(_open(out, storage), "maximize" if cfg.monitor.endswith("acc") else "minimize")
    objective = _objective(space, out, threads, data)
    here = str(out.resolve())
    while True:
        with sweep_storage.sweep_lock(out):
            _requeue_interrupted(study, out, rdb)
            if _counted(study) >= trials:
                return
            trial = study.ask()
            study.sampler = _sampler(seed, trial.number)  # (parameters are drawn at suggest, after this)
            run = trial.user_attrs.get("run") or f"trial-{trial.number:04d}"
            if _counted(study, before=trial.number) >= trials:
                # copies on one database count and ask without a common lock: the later surplus trial gives way
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=TrialState.FAIL)
                return
            held = sweep_storage.claim(out, run)
            if held is None:  # cannot happen under the lock (a requeued trial's claim was free)
                raise TrainlabError(f"{out / TRIALS / run} is claimed by another process; run the command again")
            for key, value in {"run": run, "host": sweep_storage.HOST, "out": here, "pid": os.getpid()}.items():
                trial.set_user_attr(key, value)
        try:
            value = objective(trial, study)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except Interrupted as e:
            # left RUNNING and its claim dropped: the same command requeues it and resumes its checkpoint
            raise Interrupted(e.exit_code - 128, f"sweep stopped; trial {trial.number} saved its checkpoint: "
                                                 "run the same sweep command again to continue it") from None
        except BaseException as e:
            reason = _trial_error(e)
            if reason is None:
                raise  # the sweep's problem: the trial stays RUNNING, to be resumed when it is fixed
            trial.set_user_attr("fail_reason", reason[:500])
            study.tell(trial, state=TrialState.FAIL)
            log.warning("sweep: trial %d failed (%s); the study goes on", trial.number, reason[:300])
        else:
            study.tell(trial, value)
        finally:
            sweep_storage.release(held)


def _open(out: Path, storage: str | None):
    sweep_storage.check_folder(out)
    return sweep_storage.open_storage(out, storage)

