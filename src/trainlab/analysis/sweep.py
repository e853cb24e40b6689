"""Hyperparameter sweeps on Optuna: a search space in TOML, every trial an ordinary run
folder, the study in Optuna's journal file beside them, so a sweep killed at any moment and
started again with the same command keeps its finished trials and continues the interrupted
one from its checkpoint (trainlab's re-run: same folder, same config -> resume).

The space file: the fixed keys at the top level (as in a --config file), and a [space] table
mapping a config or recipe key, or model_kwargs.NAME, to one of

    { low = 1e-4, high = 1e-2, log = true }    a float (log-uniform with log = true)
    { low = 32, high = 256, step = 32 }        an integer
    { choices = ["adam", "sgd"] }              a choice

Selection is on the validation split only (the config's `monitor`); the test accuracy of the
winner is reported once, with how optimistic its validation score probably is.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from trainlab.config import RUN_FIELDS, load_toml, resolve
from trainlab.errors import ConfigError, TrainlabError
from trainlab.recipes import RECIPE_FIELDS
from trainlab.store import runs
from trainlab.store.atomic import atomic_write_text
from trainlab.training.callbacks import Callback

log = logging.getLogger("trainlab")

JOURNAL = "study.journal"
TRIALS = "trials"
SUMMARY = "sweep.json"
NOT_SWEPT = {"name", "runs_dir", "rerun", "quiet", "tensorboard", "data_dir", "device", "threads", "dataset",
             "monitor", "mode", "init_from"}  # where a run goes or what it is judged by: fixed per sweep
MAX_CHOICES = 100


@dataclass
class Space:
    fixed: dict  # config values every trial shares
    params: dict  # name -> {"low", "high", "log"} | {"low", "high", "step"} | {"choices"}
    source: str


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TrainlabError("sweeps need Optuna: pip install 'trainlab[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def load_space(path: str | Path) -> Space:
    """Read and check a space file; every problem is one sentence naming the key."""
    raw = load_toml(path)
    space = raw.pop("space", None)
    where = str(path)
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where} has no [space] table: add one, e.g. [space] lr = {{ low = 1e-4, high = 1e-2, "
                          "log = true }")
    resolve(raw, origin=where)  # the fixed part alone is a valid config
    params = {name: _param(name, spec, raw, where) for name, spec in space.items()}
    return Space(raw, params, where)


def _param(name: str, spec, fixed: dict, where: str) -> dict:
    key = name.partition(".")[2] if name.startswith("model_kwargs.") else name
    if not name.startswith("model_kwargs.") and name not in RUN_FIELDS and name not in RECIPE_FIELDS:
        raise ConfigError(f"{where}: [space] {name} is not a config or recipe key (or model_kwargs.NAME)")
    if name in NOT_SWEPT or name == "model_kwargs" or not key.isidentifier():
        raise ConfigError(f"{where}: [space] {name} cannot be swept: it says where a run goes or how it is "
                          "judged; set it at the top level")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: [space] {name} must be a table such as {{ low = .., high = .. }} or "
                          "{ choices = [..] }")
    kinds = set(spec)
    if kinds == {"choices"}:
        choices = spec["choices"]
        if not isinstance(choices, list) or not 1 <= len(choices) <= MAX_CHOICES or \
                not all(isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError(f"{where}: [space] {name}.choices must be a list of 1 to {MAX_CHOICES} numbers, "
                              "strings or booleans")
        out = {"choices": choices}
        values = choices
    elif kinds <= {"low", "high", "log", "step"} and {"low", "high"} <= kinds:
        low, high = spec["low"], spec["high"]
        step, use_log = spec.get("step"), spec.get("log", False)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
        if not numbers or not low < high:
            raise ConfigError(f"{where}: [space] {name} needs numbers low < high (got {low!r}, {high!r})")
        if not isinstance(use_log, bool):
            raise ConfigError(f"{where}: [space] {name}.log must be true or false")
        if use_log and low <= 0:
            raise ConfigError(f"{where}: [space] {name} with log = true needs low > 0")
        if step is not None and (use_log or not all(isinstance(v, int) for v in (low, high, step)) or step <= 0):
            raise ConfigError(f"{where}: [space] {name}.step makes an integer range: low, high and step must be "
                              "integers, step > 0, and no log")
        out = {"low": low, "high": high, "log": use_log, **({"step": step} if step is not None else {})}
        values = (low, high)
    else:
        raise ConfigError(f"{where}: [space] {name} must be {{ low, high [, log] }}, {{ low, high, step }} or "
                          f"{{ choices }}, not {sorted(kinds)}")
    for value in values:  # every end of the range is a valid config: a typo fails now, not in trial 17
        resolve(_with(fixed, name, value), origin=f"{where}: [space] {name} = {value!r}")
    return out


def _with(values: dict, name: str, value) -> dict:
    if name.startswith("model_kwargs."):
        return {**values, "model_kwargs": {**values.get("model_kwargs", {}), name.partition(".")[2]: value}}
    return {**values, name: value}


def _suggest(trial, name: str, spec: dict):
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    if "step" in spec:
        return trial.suggest_int(name, spec["low"], spec["high"], step=spec["step"])
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=spec["log"])


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


STORAGE_FILE = "storage.url"  # an RDB URL given once with --storage: every later command uses it


def _storage(out: Path):
    """Optuna's journal file in the sweep folder, or the RDB URL recorded there (a URL such as
    postgresql://... lets several machines share one study)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    url = out / STORAGE_FILE
    if url.is_file():
        return url.read_text(encoding="utf-8").strip()
    return JournalStorage(JournalFileBackend(str(out / JOURNAL)))


def _study(out: Path, direction: str, seed: int):
    optuna = _optuna()
    storage = _storage(out)
    return optuna.create_study(study_name="trainlab", storage=storage, direction=direction, load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=seed),
                               pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1))


def _requeue_interrupted(study, out: Path) -> int:
    """A trial left RUNNING whose run folder nobody holds was killed: it is marked failed and
    queued again with the same parameters and the same folder, so it resumes there."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        folder = out / TRIALS / t.user_attrs.get("run", f"trial-{t.number:04d}")
        try:
            with runs.RunLock(folder) if folder.is_dir() else contextlib.nullcontext():
                pass
        except TrainlabError:
            continue  # a live worker owns it
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"run": folder.name, "requeued_from": t.number})
        log.warning("sweep: trial %d was interrupted: queued again, to resume in %s", t.number, folder)
        n += 1
    return n


def _objective(space: Space, out: Path, threads: int | None, data):
    from trainlab.training.session import train

    optuna = _optuna()

    def objective(trial):
        name = trial.user_attrs.get("run") or f"trial-{trial.number:04d}"
        trial.set_user_attr("run", name)
        values = dict(space.fixed)
        for pname, spec in space.params.items():
            values = _with(values, pname, _suggest(trial, pname, spec))
        values.update(name=name, runs_dir=str(out / TRIALS), quiet=True, **({"threads": threads} if threads else {}))
        cfg = resolve(values, origin=space.source)
        report = ReportToOptuna(trial, cfg.monitor)
        result = train(cfg, data=data, progress=False, callbacks=[report])
        trial.set_user_attr("test_accuracy", result.test["accuracy"])  # reported, never selected on
        if report.pruned or result.results.get("stopped") == "pruned":
            raise optuna.TrialPruned()
        return result.results["best"]["value"]
    return objective


def _worker(space_path: str, trials: int, out: str, threads: int | None, seed: int) -> None:
    """One worker process: optimizes until the study holds `trials` finished trials."""
    space, out_dir = load_space(space_path), Path(out)
    run_sweep_worker(space, trials, out_dir, threads, seed, None)


def run_sweep_worker(space: Space, trials: int, out: Path, threads, seed: int, data) -> None:
    """Ask for a trial, run it, tell the result, until the study holds `trials` trials
    (complete, pruned or running): the count and the ask happen under one file lock, so
    workers together never start more than `trials` and never the same one."""
    import fcntl

    optuna = _optuna()
    from optuna.trial import TrialState

    cfg = resolve(space.fixed)
    study = _study(out, "maximize" if cfg.monitor.endswith("acc") else "minimize", seed)
    objective = _objective(space, out, threads, data)
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    lock_fd = os.open(out / ".sweep.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        while True:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                if len(study.get_trials(deepcopy=False, states=counted)) >= trials:
                    return
                trial = study.ask()
            finally:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
            else:
                study.tell(trial, value)
    finally:
        os.close(lock_fd)


@dataclass
class SweepResult:
    out: Path
    trials: list[dict]
    best: dict
    summary: dict


def sweep(space: str | Path | Space, *, trials: int, out: str | Path, workers: int = 1, seed: int = 0,
          data=None, storage: str | None = None) -> SweepResult:
    """Run (or continue) a sweep until the study holds `trials` complete or pruned trials.
    `storage`: an Optuna RDB URL (sqlite:///..., postgresql://...) instead of the journal file,
    recorded in the sweep folder so the same command later finds it."""
    if not 1 <= trials <= 100_000 or not 1 <= workers <= 64:
        raise ConfigError("--trials must be 1 to 100000 and --workers 1 to 64")
    space = space if isinstance(space, Space) else load_space(space)
    if workers > 1 and data is not None:
        raise ConfigError("workers > 1 load the data themselves: give the data set in the space file, not data=")
    out = Path(out)
    (out / TRIALS).mkdir(parents=True, exist_ok=True)
    if storage is not None:
        known = out / STORAGE_FILE
        if known.is_file() and known.read_text(encoding="utf-8").strip() != storage:
            raise ConfigError(f"{out} already records the storage {known.read_text().strip()!r}: give the same "
                              "--storage, or another --out")
        if "://" not in storage:
            raise ConfigError(f"--storage {storage!r} is invalid: give an Optuna RDB URL, e.g. "
                              "sqlite:///sweep.db or postgresql://user@host/db")
        atomic_write_text(known, storage + "\n")
    cfg = resolve(space.fixed)
    study = _study(out, "maximize" if cfg.monitor.endswith("acc") else "minimize", seed)
    _requeue_interrupted(study, out)
    if workers == 1:
        run_sweep_worker(space, trials, out, cfg.threads, seed, data)
    else:
        import multiprocessing

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = cfg.threads or max(1, cores // workers)  # the cores divided among the workers
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(space.source, trials, str(out), threads, seed + i))
                 for i in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [p.exitcode for p in procs if p.exitcode]
        if failed:
            raise TrainlabError(f"{len(failed)} sweep worker(s) failed (exit {failed[0]}); run the same command "
                                "again to continue the sweep")
    return summarize(out)


def summarize(out: str | Path) -> SweepResult:
    """The trials, the winner (by validation only) and how optimistic its score probably is."""
    from optuna.trial import TrialState

    out = Path(out)
    optuna = _optuna()

    study = optuna.load_study(study_name="trainlab", storage=_storage(out))
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "run": t.user_attrs.get("run"), "test_accuracy": t.user_attrs.get("test_accuracy")}
            for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    if not complete:
        raise TrainlabError(f"{out}: no trial has completed yet; run the same command again to continue")
    maximize = study.direction.name == "MAXIMIZE"
    ranked = sorted(complete, key=lambda r: r["value"], reverse=maximize)
    best, top = ranked[0], [r["value"] for r in ranked[:5]]
    summary = {"trials": len(rows), "complete": len(complete), "pruned": len(rows) - len(complete),
               "best": best, "direction": study.direction.name.lower(),
               # the winner's validation score is the best of many noisy draws: the spread of the
               # top trials is a rough measure of how much of its lead is luck
               "top5_spread": statistics.pstdev(top) if len(top) > 1 else None,
               "best_minus_top5_median": abs(best["value"] - statistics.median(top)) if len(top) > 1 else None}
    if len(complete) >= 2 and best["params"]:
        try:  # fANOVA, Optuna's default evaluator: which parameters the score depended on
            summary["importances"] = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError) as e:
            log.warning("sweep: no parameter importances (%s)", e)
    summary["figure"] = _figure(rows, maximize, out)
    runs.write_json(out / SUMMARY, summary)
    return SweepResult(out, rows, best, summary)


def _figure(rows: list[dict], maximize: bool, out: Path) -> str | None:
    """Each parameter against the validation score, complete and pruned trials apart."""
    try:
        from trainlab import plots

        return str(plots.sweep_scatter(rows, out / "sweep", higher_is_better=maximize).png)
    except TrainlabError as e:  # matplotlib missing: the summary is still written
        log.warning("sweep: no figure (%s)", e)
        return None


def confirm(out: str | Path, space: str | Path | Space, seeds: int, data=None) -> dict:
    """The winner retrained with `seeds` more seeds (runs confirm-seed-N under the sweep): its test
    accuracy as mean and spread, the honest figure to quote."""
    from trainlab.training.session import train

    out, space = Path(out), space if isinstance(space, Space) else load_space(space)
    best = summarize(out).best
    values = dict(space.fixed)
    for name, value in best["params"].items():
        values = _with(values, name, value)
    base = resolve(values).seed
    accs = []
    for i in range(1, seeds + 1):
        cfg = resolve({**values, "seed": base + i, "name": f"confirm-seed-{base + i}", "runs_dir": str(out / TRIALS),
                       "quiet": True})
        accs.append(train(cfg, data=data, progress=False).test["accuracy"])
    result = {"params": best["params"], "seeds": seeds, "test_accuracies": accs,
              "mean": statistics.fmean(accs), "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0}
    summary = runs.read_json(out / SUMMARY)
    runs.write_json(out / SUMMARY, {**summary, "confirmed": result})
    return result
