"""Classification metrics: plain tensors in, plain Python results out.

Undefined values are NaN, never a silent 0 (JSON writers turn them into null):
- accuracy / recall of a class with no samples: NaN (0 of 0);
- precision of a class that is never predicted: NaN (no prediction to be right about);
- F1 = 2·TP / (2·TP + FP + FN): 0 for a class that has samples but is never predicted
  (it found none of them), NaN only for a class neither present nor predicted.
Macro averages skip NaN classes.
"""

from __future__ import annotations

import math
import numbers

import torch


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[true, predicted] as an int64 CPU tensor (one bincount, no Python loop)."""
    preds, labels = preds.flatten().long().cpu(), labels.flatten().long().cpu()
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def normalize_rows(cm: torch.Tensor) -> torch.Tensor:
    """Each row as fractions of that true class (NaN row for a class with no samples)."""
    cm = cm.double()
    return cm / cm.sum(1, keepdim=True)


def per_class_accuracy(cm: torch.Tensor) -> list[float]:
    """Recall of each class: correct / samples of that class (NaN for an absent class)."""
    totals = cm.sum(1).double()
    return (cm.diag().double() / totals).tolist()


def precision_recall_f1(cm: torch.Tensor) -> dict[str, list[float]]:
    tp = cm.diag().double()
    predicted = cm.sum(0).double()
    actual = cm.sum(1).double()
    # written from counts (not from P and R) so "never predicted" gives F1 0, not 0/0
    f1 = 2 * tp / (predicted + actual)
    return {"precision": (tp / predicted).tolist(), "recall": (tp / actual).tolist(),
            "f1": f1.tolist()}


def nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def most_confused(cm: torch.Tensor, classes: list[str], top: int = 5) -> list[dict]:
    """The off-diagonal cells with the most errors, largest first (ties: row-major order).

    `rate` is the share of the true class sent to the predicted one.
    """
    off = cm.clone()
    off.fill_diagonal_(0)
    values, flat = off.flatten().sort(descending=True, stable=True)
    n = cm.shape[0]
    out = []
    for v, f in zip(values.tolist()[:top], flat.tolist()[:top]):
        if v == 0:
            break
        t, p = divmod(f, n)
        out.append({"true": classes[t], "predicted": classes[p], "count": v,
                    "rate": v / max(1, int(cm[t].sum()))})
    return out


def highest_loss(logits: torch.Tensor, labels: torch.Tensor, k: int = 16,
                 only_wrong: bool = False) -> dict[str, list]:
    """The k examples with the largest cross-entropy, largest first.

    Returns lists: index (position in `labels`), loss, true, pred, confidence (softmax
    probability of the predicted class). `only_wrong` keeps misclassified examples only.
    """
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    candidates = torch.arange(len(labels))
    if only_wrong:
        candidates = candidates[pred != labels]
    order = losses[candidates].argsort(descending=True, stable=True)[:k]
    idx = candidates[order]
    return {"index": idx.tolist(), "loss": losses[idx].tolist(), "true": labels[idx].tolist(),
            "pred": pred[idx].tolist(), "confidence": conf[idx].tolist()}


def summarize(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Overall and per-class results for one split, as plain values (JSON-ready)."""
    preds = logits.argmax(1)
    cm = confusion_matrix(preds, labels, len(classes))
    prf = precision_recall_f1(cm)
    return {
        "n": int(len(labels)),
        "accuracy": float((preds == labels).double().mean()) if len(labels) else float("nan"),
        "loss": float(torch.nn.functional.cross_entropy(logits.float(), labels)) if len(labels) else float("nan"),
        "per_class": [{"class": c, "accuracy": a, "precision": p, "recall": r, "f1": f, "support": int(s)}
                      for c, a, p, r, f, s in zip(classes, per_class_accuracy(cm), prf["precision"],
                                                  prf["recall"], prf["f1"], cm.sum(1).tolist())],
        "macro": {key: nanmean(prf[key]) for key in ("precision", "recall", "f1")},
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": normalize_rows(cm).tolist(),
        "most_confused": most_confused(cm, classes),
    }


def json_safe(obj):
    """NaN/inf floats as None, recursively: strict JSON (browsers, jq) has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def percent(x, digits: int = 2) -> str:
    """0.8512 as '85.12%', and 'n/a' for a missing or NaN value (never 'nan%').

    The one percent formatter: it lives here, the lowest layer, so the figures (plots) and
    the tables (analysis, cli) print a number the same way."""
    if not isinstance(x, numbers.Real) or math.isnan(x):
        return "n/a"
    return f"{100 * x:.{digits}f}%"
