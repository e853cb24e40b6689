"""The full evaluation of a trained model: tables, files and figures of what it gets wrong.

`evaluate_run_full(run_dir)` predicts the test split once and writes, into the run folder
(or beside a bare checkpoint file):
  evaluation.json       summary (per-class precision/recall/F1, confusion matrix counts and
                        row-normalized, most-confused pairs) + highest-loss test examples
  per_class.csv         one row per class
  confusion_matrix.csv  counts, rows = true class, columns = predicted class
  plots/                confusion matrix, per-class bars, misclassified grid, samples by
                        class, and the train/test curves when the run has metrics.jsonl
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainlab import plots
from trainlab.data import Dataset
from trainlab.errors import TrainlabError
from trainlab.inference import checkpoint_path, evaluate_checkpoint
from trainlab.metrics import highest_loss, json_safe
from trainlab.store import runs
from trainlab.store.atomic import atomic_write_text
from trainlab.analysis.prediction import open_model

log = logging.getLogger("trainlab")

EVALUATION_FILE = "evaluation.json"
PER_CLASS_FILE = "per_class.csv"
CONFUSION_FILE = "confusion_matrix.csv"
PLOTS_DIR = "plots"


@dataclass
class Evaluation:
    out_dir: Path
    summary: dict  # metrics.summarize() of the test split
    highest_loss: list[dict]  # {index, loss, true, pred, confidence}, largest loss first
    data_matches: bool | None  # the data's hashes equal the training data's (None: unknown)
    files: dict[str, Path] = field(default_factory=dict)


def _fmt(x) -> str:
    return "" if isinstance(x, float) and math.isnan(x) else str(x)  # empty cell = undefined


def _write_csv(path: Path, rows: list[list]) -> None:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_per_class_csv(path: Path, summary: dict) -> None:
    keys = ("class", "support", "accuracy", "precision", "recall", "f1")
    _write_csv(path, [list(keys)] + [[_fmt(pc[k]) for k in keys] for pc in summary["per_class"]])


def write_confusion_csv(path: Path, cm: list[list[int]], classes: list[str]) -> None:
    _write_csv(path, [["true \\ predicted", *classes]] + [[name, *row] for name, row in zip(classes, cm)])


def _want_plots(plots_flag: bool | None) -> bool:
    if plots_flag is None:  # auto: figures when the report extra is installed
        if importlib.util.find_spec("matplotlib") is None:
            log.info("evaluate: matplotlib is not installed, so no figures were drawn "
                     "(pip install trainlab[report])")
            return False
        return True
    return plots_flag


def evaluate_run_full(path_or_run: str | Path, data_dir=None, device: str = "auto", *,
                      data: Dataset | None = None, top_k: int = 16,
                      plots_flag: bool | None = None, allow_import=()) -> Evaluation:
    """Evaluate a run folder or checkpoint on its test split and write the results (holding
    the run folder's lock: one process owns a run folder at a time)."""
    path = Path(path_or_run)
    if not path.exists():
        raise TrainlabError(f"{path} does not exist: give a run folder or a checkpoint file")
    owner = runs.owning_run(path if path.is_dir() else path.parent)
    with (runs.RunLock(owner) if owner is not None else contextlib.nullcontext()):
        return _evaluate(path, data_dir, device, data, top_k, plots_flag, allow_import)


def _evaluate(path: Path, data_dir, device, data, top_k, plots_flag, allow_import) -> Evaluation:
    run_dir = path if path.is_dir() else None
    out_dir = path if path.is_dir() else path.parent
    if run_dir is None and path.name == runs.WEIGHTS_FILE and (path.parent / runs.METRICS_FILE).exists():
        run_dir = path.parent  # runs/x/model.pt is the run itself: give it its curves too

    result = evaluate_checkpoint(path, data=data, data_dir=data_dir, device=device, allow_import=allow_import,
                                 open_graph=open_model)
    ckpt, data, logits, labels = result.ckpt, result.data, result.logits, result.labels
    summary, matches, classes = result.summary, result.data_matches, list(result.data.classes)
    top = highest_loss(logits, labels, top_k)
    rows = [{"index": i, "loss": loss, "true": classes[t], "pred": classes[p], "confidence": c}
            for i, loss, t, p, c in zip(top["index"], top["loss"], top["true"], top["pred"],
                                        top["confidence"])]

    files = {"evaluation": out_dir / EVALUATION_FILE, "per_class": out_dir / PER_CLASS_FILE,
             "confusion_matrix": out_dir / CONFUSION_FILE}
    runs.write_json(files["evaluation"], json_safe({
        "checkpoint": str(checkpoint_path(path)),
        "epoch": ckpt.get("epoch"), "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": data.name, "data_fingerprint": data.fingerprint(),
        "data_matches_training": matches, "split": "test", "test": summary,
        "highest_loss": rows}))
    write_per_class_csv(files["per_class"], summary)
    write_confusion_csv(files["confusion_matrix"], summary["confusion_matrix"], classes)

    if _want_plots(plots_flag):
        pdir = out_dir / PLOTS_DIR
        title = run_dir.name if run_dir else path.name
        files["confusion_plot"] = plots.confusion_heatmap(
            summary["confusion_matrix"], classes, pdir / "confusion_matrix", f"{title}: confusion matrix").png
        files["per_class_plot"] = plots.per_class_bars(
            summary["per_class"], pdir / "per_class", f"{title}: per-class test accuracy",
            overall=summary["accuracy"]).png
        wrong = highest_loss(logits, labels, top_k, only_wrong=True)
        files["misclassified_plot"] = plots.misclassified_grid(
            data.test_x[wrong["index"]], wrong["true"], wrong["pred"], wrong["confidence"], classes,
            pdir / "misclassified").png
        files["samples_plot"] = plots.sample_grid(data.test_x, data.test_y, classes,
                                                  pdir / "samples", title=f"{data.name}: test samples by class").png
        history = runs.read_metrics(run_dir) if run_dir else []
        if any("epoch" in r for r in history):
            files["curves_plot"] = plots.curves(history, pdir / "curves", f"{title}: train vs validation").png
    return Evaluation(out_dir, summary, rows, matches, files)


def load_evaluation(run_dir: str | Path) -> dict | None:
    """A run folder's evaluation.json, or None when it has not been evaluated."""
    path = Path(run_dir) / EVALUATION_FILE
    return runs.read_json(path) if path.exists() else None
