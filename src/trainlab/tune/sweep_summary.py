"""A sweep's summary: the trials, the winner by validation only, its one test figure and how
optimistic its score probably is, the parameter importances and figure; written to sweep.json."""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

from trainlab import plots
from trainlab.errors import TrainlabError
from trainlab.store import runs
from trainlab.tune import sweep_storage
from trainlab.tune.sweep_storage import SUMMARY, TRIALS
from trainlab.tune.sweep_study import _not_counted, _optuna

log = logging.getLogger("trainlab")


@dataclass
class SweepResult:
    out: Path
    trials: list[dict]
    best: dict
    summary: dict


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
        return str(plots.sweep_scatter(rows, out / "sweep", higher_is_better=maximize).png)
    except TrainlabError as e:  # matplotlib missing: the summary is still written
        log.warning("sweep: no figure (%s)", e)
        return None


