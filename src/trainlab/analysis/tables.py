"""Plain-text tables for the terminal: results a person reads at the end of a run.

The rows of the per-class and most-confused tables are built here once; the terminal
renders them with `table`, the HTML report with its own `<table>`, so both show the same
cells. Percentages go through `trainlab.metrics.percent`, the one percent formatter.
"""

from __future__ import annotations

from trainlab.metrics import percent
from trainlab.text import printable  # noqa: F401  (its home is layer 1; re-exported for callers here)


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A fixed-width table; `align` is one of 'l'/'r' per column (default: first left)."""
    cells = [[printable(h) for h in headers]] + [[printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def fmt(row):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align))

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


# ---------------------------------------------------------------- one split's results

PER_CLASS_HEADERS = ["class", "accuracy", "precision", "f1", "n"]
CONFUSED_HEADERS = ["true", "predicted as", "count", "share of true class"]


def per_class_rows(summary: dict) -> list[list]:
    """One row per class (accuracy, precision, F1, n) and an "overall" row last.

    `summary` is metrics.summarize() or the same read back from JSON (NaN became None)."""
    rows = [[pc["class"], percent(pc["accuracy"]), percent(pc["precision"]), percent(pc["f1"]),
             pc["support"]] for pc in summary["per_class"]]
    rows.append(["overall", percent(summary.get("accuracy")), "", "", summary.get("n", "")])
    return rows


def per_class_table(summary: dict) -> str:
    return table(PER_CLASS_HEADERS, per_class_rows(summary))


def per_class_prf_table(summary: dict) -> str:
    """`trainlab evaluate`'s view: recall, precision and F1 per class, then the macro average."""
    # a class's accuracy is its recall: one column, named both ways
    rows = [[pc["class"], pc["support"], percent(pc["recall"]), percent(pc["precision"]), percent(pc["f1"])]
            for pc in summary["per_class"]]
    macro = summary.get("macro") or {}
    rows.append(["macro avg", "", percent(macro.get("recall")), percent(macro.get("precision")),
                 percent(macro.get("f1"))])
    rows.append(["overall", summary["n"], percent(summary["accuracy"]), "", ""])
    return table(["class", "n", "recall (= accuracy)", "precision", "F1"], rows)


def confused_rows(summary: dict) -> list[list]:
    """The most-confused pairs (CONFUSED_HEADERS), largest count first."""
    return [[c["true"], c["predicted"], c["count"], percent(c["rate"])]
            for c in summary.get("most_confused") or []]


def run_summary(title: str, result) -> str:
    """What `trainlab train` and `make demo` print after a run (`result`: a TrainResult)."""
    summary, results = result.test, result.results
    tested = results.get("tested")  # which model the one test evaluation saw (a finished run's file: checked)
    tested = tested.get("label") if isinstance(tested, dict) else None
    head = (f"{printable(title)}\n  test accuracy {percent(summary['accuracy'])}"
            f"{f' of the model at {printable(tested[:200])}' if isinstance(tested, str) else ''} on the "
            f"{results.get('test_split', 'test split')} | {len(result.history)} epochs | "
            f"{results['seconds_per_epoch']:.2f} s/epoch | device {result.device}")
    confused = summary.get("most_confused") or []
    tail = ""
    if confused:
        tail = "\n  most confused: " + "; ".join(
            f"{printable(c['true'])} -> {printable(c['predicted'])} ({c['count']})" for c in confused[:3])
    return head + "\n" + per_class_table(summary) + tail


# ---------------------------------------------------------------- predictions

def predictions_table(probs, classes: list[str], truth=None, names=None) -> str:
    """`trainlab predict`'s table: each image's top class and probability, the next two
    classes, and with known labels the true class and whether the top one is wrong."""
    top = probs.topk(min(3, probs.shape[1]), dim=1)
    rows = []
    for i in range(len(probs)):
        best = int(top.indices[i, 0])
        alt = ", ".join(f"{classes[j]} {percent(p, 1)}"
                        for p, j in zip(top.values[i, 1:].tolist(), top.indices[i, 1:].tolist()))
        row = [i if names is None else names[i], classes[best], percent(float(top.values[i, 0]), 1), alt]
        if truth is not None:
            row.insert(1, classes[int(truth[i])])
            row.append("" if int(truth[i]) == best else "wrong")
        rows.append(row)
    headers = ["#", "predicted", "prob", "next"]
    if truth is not None:
        headers = ["#", "true", "predicted", "prob", "next", ""]
    if names is not None:
        headers = ["file", *headers[1:]]
    return table(headers, rows, ("l" if names is not None else "r") + "l" * (len(headers) - 1))
