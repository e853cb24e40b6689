"""A sweep's Optuna study: created, seeded per trial, and its bookkeeping -- which trials count
toward N, which were interrupted (RUNNING, nobody holds their claim) and are queued again, and
which earlier trial already trained the same parameters."""

from __future__ import annotations

import datetime
import logging
import random
from pathlib import Path

from trainlab.errors import TrainlabError
from trainlab.tune import sweep_storage
from trainlab.tune.sweep_storage import TRIALS

log = logging.getLogger("trainlab")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TrainlabError("sweeps need Optuna: pip install 'trainlab[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _study(storage, direction: str):
    optuna = _optuna()
    return optuna.create_study(study_name="trainlab", storage=storage, direction=direction, load_if_exists=True,
                               pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1))


def _sampler(seed: int, number: int):
    """TPE seeded by the sweep's seed and the trial's number (unique in the study, given by the
    storage, across machines too): no two trials share a seed, so a restarted sweep or a second
    copy never draws the same start-up parameters again, and the same history gives the same draw."""
    return _optuna().samplers.TPESampler(seed=random.Random(f"{seed}/{number}").randrange(2**32))


def _requeue_interrupted(study, out: Path, rdb: bool) -> int:
    """A trial left RUNNING that no live process claims was killed (kill -9, SIGTERM, Ctrl-C,
    a lost machine): it is marked failed-and-requeued (not counted) and queued again with the same
    parameters and folder, so the same command resumes it there. Called under the sweep lock."""
    from optuna.trial import TrialState

    n, here = 0, str(out.resolve())
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs, run = t.user_attrs, t.user_attrs.get("run", f"trial-{t.number:04d}")
        if "host" not in attrs:  # killed between its ask and its claim, or a trial of an older trainlab
            age = (datetime.datetime.now() - t.datetime_start).total_seconds() if t.datetime_start else 1e9
            if rdb and age < 300:
                continue  # another machine may be in that step now
        elif attrs["host"] != sweep_storage.HOST or attrs.get("out") != here:
            continue  # another machine's or another folder's trial: its own command resumes it
        else:
            fd = sweep_storage.claim(out, run)
            if fd is None:
                continue  # a live process runs it
            sweep_storage.release(fd)
        study._storage.set_trial_user_attr(t._trial_id, "requeued", True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"run": run, "requeued_from": t.number})
        log.warning("sweep: trial %d was interrupted: queued again, to resume in %s", t.number, out / TRIALS / run)
        n += 1
    return n


def _counted(study, before: int | None = None) -> int:
    """Trials toward N (those numbered below `before`): complete, pruned, running and failed (a failed
    trial counts, so a space that always fails ends), but not one requeued to be resumed."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)
    trials, skipped = study.get_trials(deepcopy=False, states=states), _not_counted(study)
    return sum(1 for t in trials if (before is None or t.number < before) and t.number not in skipped)


def _not_counted(study) -> set[int]:
    """Trials failed only to be queued again, or surplus asks that gave way (older trainlab marked a
    requeued trial only by the new trial's requeued_from)."""
    trials = study.get_trials(deepcopy=False)
    skipped = {t.number for t in trials if t.user_attrs.get("requeued") or t.user_attrs.get("surplus")}
    return skipped | {t.user_attrs["requeued_from"] for t in trials if "requeued_from" in t.user_attrs}


def _same_as(study, trial) -> "object | None":
    """A finished trial with exactly these parameters (the sampler can draw a discrete point again):
    its result is this trial's, without training the same configuration twice."""
    from optuna.trial import TrialState

    skipped = _not_counted(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if t.params == trial.params and t.number != trial.number and t.number not in skipped:
            return t
    return None

