"""`trainlab predict`'s output, written as the predictions stream in: a table (for a person),
CSV or JSON (for a program). Each image gets its top K classes and probabilities; labelled
inputs add the true class, and at the end accuracy, a per-class table and the confusion
matrix (the table's and CSV's summary goes to stderr for CSV, so stdout stays one CSV)."""

from __future__ import annotations

import csv
import json
import sys

import torch

from trainlab.analysis.tables import per_class_prf_table, printable, table
from trainlab.metrics import json_safe, percent

FORMATS = ("table", "csv", "json")


class PredictionWriter:
    def __init__(self, fmt: str, classes: list[str], top: int, labelled: bool, model: str, out=None,
                 name_header: str = "file"):
        self.fmt, self.classes, self.labelled, self.model = fmt, classes, labelled, model
        self.name_header = name_header
        self.top = max(1, min(top, len(classes)))
        self.out = out or sys.stdout
        self.widths: list[int] | None = None
        self.first = True

    def _top(self, probs: torch.Tensor):
        t = probs.topk(self.top, dim=1)
        return t.indices.tolist(), t.values.tolist()

    def write(self, names: list[str], probs: torch.Tensor, labels: torch.Tensor | None) -> None:
        idx, val = self._top(probs)
        truth = labels.tolist() if labels is not None else [None] * len(names)
        getattr(self, "_" + self.fmt)(names, idx, val, truth)
        self.out.flush()

    # -- table: fixed columns, widths from the first chunk (later cells may push a row wider)
    def _table(self, names, idx, val, truth):
        rows = []
        for name, ix, vs, t in zip(names, idx, val, truth):
            row = [name, *([self.classes[t]] if self.labelled else []), self.classes[ix[0]], percent(vs[0], 1),
                   ", ".join(f"{self.classes[j]} {percent(p, 1)}" for j, p in zip(ix[1:], vs[1:]))]
            if self.labelled:
                row.append("" if t == ix[0] else "wrong")
            rows.append([printable(c) for c in row])
        headers = [self.name_header, *(["true"] if self.labelled else []), "predicted", "prob",
                   "next" if self.top > 1 else "", *([""] if self.labelled else [])]
        if self.widths is None:
            self.widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
            print(self._line(headers), file=self.out)
            print("  ".join("-" * w for w in self.widths), file=self.out)
        for r in rows:
            print(self._line(r), file=self.out)

    def _line(self, cells) -> str:
        return "  ".join((c.rjust(w) if i == (3 if self.labelled else 2) else c.ljust(w))
                         for i, (c, w) in enumerate(zip(cells, self.widths))).rstrip()

    # -- csv: one header, then one row per image (file, [true], class_1, prob_1, ... class_K, prob_K)
    def _csv(self, names, idx, val, truth):
        w = csv.writer(self.out, lineterminator="\n")
        if self.first:
            w.writerow([self.name_header, *(["true"] if self.labelled else []),
                        *[f"{k}_{i + 1}" for i in range(self.top) for k in ("class", "prob")]])
            self.first = False
        for name, ix, vs, t in zip(names, idx, val, truth):
            w.writerow([printable(name), *([printable(self.classes[t])] if self.labelled else []),
                        *[x for j, p in zip(ix, vs) for x in (printable(self.classes[j]), f"{p:.6f}")]])

    # -- json: one document, streamed: {"model", "top", "predictions": [...], "summary"}
    def _json(self, names, idx, val, truth):
        for name, ix, vs, t in zip(names, idx, val, truth):
            rec = {"file": name, **({"true": self.classes[t]} if self.labelled else {}),
                   "top": [{"class": self.classes[j], "probability": round(p, 6)} for j, p in zip(ix, vs)]}
            head = json.dumps({"model": self.model, "top": self.top})[:-1] + ', "predictions": [\n' \
                if self.first else ",\n"
            self.out.write(head + json.dumps(rec))
            self.first = False

    def finish(self, summary: dict | None, full: bool = True) -> None:
        """`full`: the per-class and confusion tables too (a labelled folder), else the accuracy line."""
        if self.fmt == "json":
            if self.first:
                self.out.write(json.dumps({"model": self.model, "top": self.top})[:-1] + ', "predictions": [')
            self.out.write("\n], \"summary\": " + json.dumps(json_safe(summary)) + "}\n")
        elif summary is not None:
            text = summary_text(summary, self.classes) if full else "\n" + summary_line(summary)
            print(text, file=sys.stderr if self.fmt == "csv" else self.out)
        self.out.flush()


def summary_text(summary: dict, classes: list[str]) -> str:
    """Accuracy, per class, and the confusion matrix (rows true, columns predicted)."""
    cm = summary["confusion_matrix"]
    short = [str(i) for i in range(len(classes))]
    return "\n".join([
        "", summary_line(summary),
        per_class_prf_table(summary), "",
        "confusion matrix (rows: true class, columns: predicted, by number)",
        table(["#", "true", *short], [[i, c, *row] for i, (c, row) in enumerate(zip(classes, cm))])])


def summary_line(summary: dict) -> str:
    return f"accuracy {percent(summary['accuracy'])} on {summary['n']} labelled images, loss {summary['loss']:.4f}"
