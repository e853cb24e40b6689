"""Classification metrics: plain tensors in, plain Python results out."""

from __future__ import annotations

import torch


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[true, predicted] as an int64 CPU tensor (one bincount, no Python loop)."""
    preds, labels = preds.flatten().long().cpu(), labels.flatten().long().cpu()
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor) -> list[float]:
    """Recall of each class: correct / samples of that class (NaN for an absent class)."""
    totals = cm.sum(1).double()
    return (cm.diag().double() / totals).tolist()


def precision_recall_f1(cm: torch.Tensor) -> dict[str, list[float]]:
    tp = cm.diag().double()
    predicted = cm.sum(0).double()
    actual = cm.sum(1).double()
    precision = tp / predicted
    recall = tp / actual
    f1 = 2 * precision * recall / (precision + recall)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist()}


def most_confused(cm: torch.Tensor, classes: list[str], top: int = 5) -> list[dict]:
    """The off-diagonal cells with the most errors, largest first."""
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
        "confusion_matrix": cm.tolist(),
        "most_confused": most_confused(cm, classes),
    }
