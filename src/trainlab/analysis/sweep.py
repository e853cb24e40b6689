"""Hyperparameter sweeps on Optuna: a search space in TOML (sweep_space), every trial an
ordinary run folder, the study in Optuna's journal file beside them (sweep_storage), so a sweep
killed at any moment and started again with the same command keeps its finished trials and
continues the interrupted one from its checkpoint (trainlab's re-run: same folder, same config
-> resume). A trial that diverges, runs out of memory or whose config is refused fails alone,
recorded with its reason; the study goes on to N trials (failed ones count, so a space that
always fails ends). Copies of the command on one study (workers, a second terminal, a second
machine on one --storage) share it: asks are serialized and a running trial is known by its
claim, so none is taken for dead or trained twice.

Selection is on the validation split only (the config's `monitor`); the test accuracy of the
winner is reported once, with how optimistic its validation score probably is.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

from trainlab.analysis import sweep_storage
from trainlab.analysis.sweep_space import Space, _suggest, _values, load_space
from trainlab.analysis.sweep_storage import SUMMARY, TRIALS
from trainlab.config import resolve
from trainlab.errors import ConfigError, TrainlabError
from trainlab.store import runs
from trainlab.training.callbacks import Callback

__all__ = ["Space", "load_space", "sweep", "summarize", "confirm", "SweepResult"]

log = logging.getLogger("trainlab")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TrainlabError("sweeps need Optuna: pip install 'trainlab[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


class ReportToOptuna(Callback):
    """Feeds the monitored validation metric to the study each epoch; stops a trial the
    pruner gives up on (its checkpoint and metrics stay, like any run's)."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric, self.pruned = trial, metric, False

    def on_epoch_end(self, run, row):
        self.trial.report(row[self.metric], row["epoch"])
        if self.trial.should_prune():
            self.pruned = True
            run.state.stopped = "pruned"
            return True


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


class SameFailure(TrainlabError):
    """A drawn configuration that already failed: it fails again without training."""


def _trial_error(e: BaseException) -> str | None:
    """The reason when `e` is the trial's own failure (its config diverged, did not fit in memory
    or was refused); None when it is the sweep's (data, disk, storage, a signal): that stops it."""
    import torch

    from trainlab.training.loop import NonFiniteLoss
    from trainlab.training.signals import Interrupted

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
    from trainlab.training.session import train

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


def _die_with_parent(parent: int) -> None:
    """PR_SET_PDEATHSIG: SIGTERM when the parent dies however it dies (kill -9 included), so a
    worker saves its trial and ends instead of training the rest of the study alone."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _worker(space_path: str, trials: int, out: str, threads: int | None, seed: int, storage: str | None,
            parent: int) -> None:
    """One worker process: ends with its parent, stops on the signal the parent forwards (its
    trial saved, to be resumed), and ends in one line, never a traceback."""
    import signal
    import sys

    from trainlab.training.signals import stop_like_ctrl_c

    stop_like_ctrl_c()  # SIGTERM / SIGHUP outside a trial's training unwind as Ctrl-C does
    _die_with_parent(parent)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only, which forwards it once
    try:
        space, out_dir = load_space(space_path), Path(out)
        run_sweep_worker(space, trials, out_dir, threads, seed, None, storage)
    except TrainlabError as e:
        print(f"trainlab: sweep worker {os.getpid()}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))


def run_sweep_worker(space: Space, trials: int, out: Path, threads, seed: int, data, storage: str | None = None
                     ) -> None:
    """Ask for a trial, run it, tell the result, until the study holds `trials` trials. Requeue,
    count, ask and claim happen under one file lock, so processes together (workers, a second copy
    of the command) never start more than `trials`, never the same one, and never take a live
    trial for a killed one."""
    from optuna.trial import TrialState

    optuna = _optuna()
    from trainlab.training.signals import Interrupted

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


@dataclass
class SweepResult:
    out: Path
    trials: list[dict]
    best: dict
    summary: dict


def sweep(space: str | Path | Space, *, trials: int, out: str | Path, workers: int = 1, seed: int = 0,
          data=None, storage: str | None = None) -> SweepResult:
    """Run (or continue) a sweep until the study holds `trials` finished trials (complete, pruned or
    failed: a trial that diverges, runs out of memory or whose config is refused fails alone).
    `storage`: an Optuna RDB URL (sqlite:////abs/path.db, postgresql://...) instead of the journal
    file: tried first, then recorded in the sweep folder (0600); later commands give it again."""
    if not 1 <= trials <= 100_000 or not 1 <= workers <= 64:
        raise ConfigError("--trials must be 1 to 100000 and --workers 1 to 64")
    space = space if isinstance(space, Space) else load_space(space)
    if workers > 1 and data is not None:
        raise ConfigError("workers > 1 load the data themselves: give the data set in the space file, not data=")
    out = Path(out)
    if out.is_dir():
        sweep_storage.check_folder(out)
    if storage is not None:
        sweep_storage.open_storage(out, storage, record=False)  # a bad one: one sentence, nothing made or recorded
    try:
        out.mkdir(parents=True, exist_ok=True)
        sweep_storage.check_folder(out)
        (out / TRIALS).mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot make the sweep folder {out} ({e.strerror}): choose another --out") from None
    sweep_storage.open_storage(out, storage)
    cfg = resolve(space.fixed)
    if workers == 1:
        run_sweep_worker(space, trials, out, cfg.threads, seed, data, storage)
    else:
        _run_workers(space, trials, out, workers, cfg.threads, seed, storage)
    return summarize(out, storage)


def _run_workers(space: Space, trials: int, out: Path, workers: int, threads, seed: int, storage) -> None:
    """K worker processes; a signal to this one is forwarded to them (each saves its trial), they
    are waited for, and the signal ends this one too (128 + signum)."""
    import multiprocessing
    import signal

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = threads or max(1, cores // workers)  # the cores divided among the workers
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(space.source, trials, str(out), threads, seed, storage, os.getpid()))
             for _ in range(workers)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM / SIGHUP (Stopped): the workers stop too
        signum = getattr(e, "signum", signal.SIGINT)
        _stop_workers(procs, signum)
        raise
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise TrainlabError(f"{len(failed)} sweep worker(s) failed (exit {failed[0]}; the reason is on the line "
                            "above): fix that and run the same command again to continue the sweep")


def _stop_workers(procs, signum: int) -> None:
    import signal

    for p in procs:
        if p.pid is not None and p.exitcode is None:
            with contextlib.suppress(OSError):
                os.kill(p.pid, signum)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:  # they save their checkpoints; a worker that hangs is killed after a while
        for p in procs:
            p.join(timeout=300)
            if p.exitcode is None:
                p.kill()
                p.join()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def summarize(out: str | Path, storage: str | None = None) -> SweepResult:
    """The trials, the winner (by validation only) and how optimistic its score probably is.
    A folder whose study is in a database, read without --storage (the report), is summarized
    from its sweep.json: the folder alone never opens the recorded URL."""
    from optuna.trial import TrialState

    out = Path(out)
    optuna = _optuna()
    sweep_storage.check_folder(out)
    if storage is None and (out / sweep_storage.STORAGE_FILE).exists() and (out / SUMMARY).is_file():
        saved = runs.read_json(out / SUMMARY)
        if isinstance(saved.get("rows"), list) and isinstance(saved.get("best"), dict):
            return SweepResult(out, saved["rows"], saved["best"], saved)
    study = optuna.load_study(study_name="trainlab", storage=sweep_storage.open_storage(out, storage))
    finished, skipped = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL), _not_counted(study)
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "run": t.user_attrs.get("run"), **({"same_as": t.user_attrs["same_as"]} if "same_as" in t.user_attrs else {}),
             **({"reason": t.user_attrs["fail_reason"]} if "fail_reason" in t.user_attrs else {})}
            for t in study.get_trials(deepcopy=False, states=finished) if t.number not in skipped]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    failed = [r for r in rows if r["state"] == "FAIL"]
    if not complete:
        why = f" ({len(failed)} failed; the first: {failed[0].get('reason', 'no reason recorded')})" if failed else ""
        raise TrainlabError(f"{out}: no trial has completed yet{why}; fix the space if every trial fails, or run "
                            "the same command again to continue")
    maximize = study.direction.name == "MAXIMIZE"
    ranked = sorted(complete, key=lambda r: r["value"], reverse=maximize)
    best, top = dict(ranked[0]), [r["value"] for r in ranked[:5]]
    best["test_accuracy"] = _winner_test_accuracy(out, best, rows)  # the one test figure, after selection
    summary = {"trials": len(rows), "complete": len(complete), "failed": len(failed),
               "pruned": len(rows) - len(complete) - len(failed), "best": best, "direction": study.direction.name.lower(),
               # the winner's validation score is the best of many noisy draws: the spread of the
               # top trials is a rough measure of how much of its lead is luck
               "top5_spread": statistics.pstdev(top) if len(top) > 1 else None,
               "best_minus_top5_median": abs(best["value"] - statistics.median(top)) if len(top) > 1 else None}
    if len(complete) >= 2 and best["params"]:
        try:  # fANOVA, Optuna's default evaluator: which parameters the score depended on
            summary["importances"] = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError) as e:
            log.warning("sweep: no parameter importances (%s)", e)
    summary["figure"] = _figure([r for r in rows if r["state"] != "FAIL"], maximize, out)
    summary["rows"] = rows
    runs.write_json(out / SUMMARY, summary)
    return SweepResult(out, rows, best, summary)


def _winner_test_accuracy(out: Path, best: dict, rows: list[dict]) -> float | None:
    """The winner's test accuracy from its run's results.json (a trial that repeated an earlier
    draw has the earlier trial's folder); None when it cannot be read."""
    run = best.get("run")
    if "same_as" in best:
        run = next((r["run"] for r in rows if r["number"] == best["same_as"]), run)
    path = out / TRIALS / str(run) / runs.RESULTS_FILE
    try:
        acc = (runs.read_results(path).get("test") or {}).get("accuracy") if path.is_file() else None
    except TrainlabError as e:
        log.warning("sweep: the winner's test accuracy is unknown (%s)", e)
        return None
    return acc if isinstance(acc, (int, float)) and not isinstance(acc, bool) else None


def _figure(rows: list[dict], maximize: bool, out: Path) -> str | None:
    """Each parameter against the validation score, complete and pruned trials apart."""
    try:
        from trainlab import plots

        return str(plots.sweep_scatter(rows, out / "sweep", higher_is_better=maximize).png)
    except TrainlabError as e:  # matplotlib missing: the summary is still written
        log.warning("sweep: no figure (%s)", e)
        return None


def confirm(out: str | Path, space: str | Path | Space, seeds: int, data=None, storage: str | None = None) -> dict:
    """The winner retrained with `seeds` more seeds (runs confirm-<its run>-seed-N under the sweep):
    its test accuracy as mean and spread, the honest figure to quote. The folders are named by the
    winner, so a study that grew and found another winner confirms it in new folders, and the same
    winner's finished confirmations are reported, not trained again."""
    from trainlab.training.session import train

    out, space = Path(out), space if isinstance(space, Space) else load_space(space)
    best = summarize(out, storage).best
    values = _values(space.fixed, best["params"])
    base = resolve(values).seed
    accs = []
    for i in range(1, seeds + 1):
        cfg = resolve({**values, "seed": base + i, "name": f"confirm-{best['run']}-seed-{base + i}",
                       "runs_dir": str(out / TRIALS), "quiet": True})
        accs.append(train(cfg, data=data, progress=False).test["accuracy"])
    result = {"params": best["params"], "run": best["run"], "seeds": seeds, "test_accuracies": accs,
              "mean": statistics.fmean(accs), "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0}
    summary = runs.read_json(out / SUMMARY)
    runs.write_json(out / SUMMARY, {**summary, "confirmed": result})
    return result
