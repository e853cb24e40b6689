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

import statistics
from pathlib import Path

from trainlab.config import resolve
from trainlab.errors import ConfigError
from trainlab.store import runs
from trainlab.training.start import train
from trainlab.tune import sweep_storage
from trainlab.tune.sweep_space import Space, _values, load_space
from trainlab.tune.sweep_storage import SUMMARY, TRIALS
from trainlab.tune.sweep_summary import SweepResult, summarize
from trainlab.tune.sweep_trial import run_sweep_worker
from trainlab.tune.sweep_workers import _run_workers

__all__ = ["Space", "load_space", "sweep", "summarize", "confirm", "SweepResult"]


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


def confirm(out: str | Path, space: str | Path | Space, seeds: int, data=None, storage: str | None = None) -> dict:
    """The winner retrained with `seeds` more seeds (runs confirm-<its run>-seed-N under the sweep):
    its test accuracy as mean and spread, the honest figure to quote. The folders are named by the
    winner, so a study that grew and found another winner confirms it in new folders, and the same
    winner's finished confirmations are reported, not trained again."""
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
