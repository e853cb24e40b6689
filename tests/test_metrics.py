"""Each metric against values worked out by hand on small tensors, then `trainlab evaluate`."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from conftest import CLOTHES, train_tiny, write_idx_folder

from trainlab import metrics

# 9 samples, 3 classes. By hand, counts[true][pred]:
#   true 0: predicted 0,0,1    -> [2, 1, 0]
#   true 1: predicted 1,0      -> [1, 1, 0]
#   true 2: predicted 2,2,1,0  -> [1, 1, 2]
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
PREDS = torch.tensor([0, 0, 1, 1, 0, 2, 2, 1, 0])
CM = [[2, 1, 0], [1, 1, 0], [1, 1, 2]]


def approx(values, expected):
    assert len(values) == len(expected)
    for v, e in zip(values, expected):
        assert (math.isnan(v) and math.isnan(e)) or v == pytest.approx(e), (values, expected)


def test_confusion_matrix_counts():
    cm = metrics.confusion_matrix(PREDS, LABELS, 3)
    assert cm.tolist() == CM
    assert cm.dtype == torch.int64 and int(cm.sum()) == 9


def test_confusion_matrix_row_normalized():
    approx(metrics.normalize_rows(torch.tensor(CM)).flatten().tolist(),
           [2 / 3, 1 / 3, 0, 1 / 2, 1 / 2, 0, 1 / 4, 1 / 4, 2 / 4])
    # a class with no samples has an undefined (NaN) row, not zeros
    assert all(math.isnan(v) for v in metrics.normalize_rows(torch.tensor([[1, 0], [0, 0]]))[1].tolist())


def test_per_class_accuracy():
    approx(metrics.per_class_accuracy(torch.tensor(CM)), [2 / 3, 1 / 2, 2 / 4])


def test_precision_recall_f1():
    prf = metrics.precision_recall_f1(torch.tensor(CM))
    approx(prf["precision"], [2 / 4, 1 / 3, 2 / 2])  # diagonal / column sums 4, 3, 2
    approx(prf["recall"], [2 / 3, 1 / 2, 2 / 4])
    # harmonic means: class 0: 2 * .5 * (2/3) / (.5 + 2/3) = 4/7
    approx(prf["f1"], [4 / 7, 2 / 5, 2 / 3])


def test_class_never_predicted_and_class_absent():
    """Class 2 has samples but is never predicted; class 3 has neither.

    precision(2) is NaN (undefined: no predictions), recall(2) = 0, F1(2) = 0 (it found none);
    class 3 is NaN throughout; macro averages skip NaN.
    """
    labels = torch.tensor([0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 0, 1, 0])
    cm = metrics.confusion_matrix(preds, labels, 4)
    assert cm.tolist() == [[2, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    prf = metrics.precision_recall_f1(cm)
    approx(prf["precision"], [2 / 4, 1 / 1, math.nan, math.nan])
    approx(prf["recall"], [1.0, 1 / 2, 0.0, math.nan])
    approx(prf["f1"], [2 / 3, 2 / 3, 0.0, math.nan])
    s = metrics.summarize(torch.nn.functional.one_hot(preds, 4).float(), labels, ["a", "b", "c", "d"])
    assert s["macro"]["precision"] == pytest.approx((0.5 + 1) / 2)
    assert s["macro"]["f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert math.isnan(s["per_class"][3]["accuracy"]) and s["per_class"][3]["support"] == 0
    # strict JSON: NaN becomes null
    safe = metrics.json_safe(s)
    assert safe["per_class"][2]["precision"] is None and safe["per_class"][2]["f1"] == 0.0
    json.dumps(safe, allow_nan=False)


def test_most_confused_ranking():
    cm = torch.tensor([[5, 3, 0], [1, 6, 0], [0, 4, 2]])
    ranked = metrics.most_confused(cm, ["a", "b", "c"], top=5)
    assert [(r["true"], r["predicted"], r["count"]) for r in ranked] == [("c", "b", 4), ("a", "b", 3), ("b", "a", 1)]
    assert [r["rate"] for r in ranked] == pytest.approx([4 / 6, 3 / 8, 1 / 7])
    assert len(metrics.most_confused(cm, ["a", "b", "c"], top=2)) == 2
    assert metrics.most_confused(torch.eye(3, dtype=torch.long), ["a", "b", "c"]) == []
    # ties keep row-major order: deterministic
    tied = metrics.most_confused(torch.tensor(CM), ["a", "b", "c"])
    assert [(r["true"], r["predicted"]) for r in tied] == [("a", "b"), ("b", "a"), ("c", "a"), ("c", "b")]


def test_highest_loss():
    logits = torch.tensor([[2.0, 0.0, 0.0],   # right, confident
                           [1.0, 0.0, 0.0],   # label 1, predicted 0
                           [0.0, 3.0, 0.0]])  # label 0, predicted 1 with high confidence
    labels = torch.tensor([0, 1, 0])
    e = math.e
    # cross-entropy = log(sum exp) - logit of the true class
    loss = [math.log(e ** 2 + 2) - 2, math.log(e + 2), math.log(e ** 3 + 2)]
    top = metrics.highest_loss(logits, labels, k=3)
    assert top["index"] == [2, 1, 0]
    assert top["loss"] == pytest.approx([loss[2], loss[1], loss[0]], rel=1e-5)
    assert top["true"] == [0, 1, 0] and top["pred"] == [1, 0, 0]
    assert top["confidence"] == pytest.approx([e ** 3 / (e ** 3 + 2), e / (e + 2), e ** 2 / (e ** 2 + 2)], rel=1e-5)
    assert metrics.highest_loss(logits, labels, k=1)["index"] == [2]
    assert metrics.highest_loss(logits, labels, k=5, only_wrong=True)["index"] == [2, 1]
    assert metrics.highest_loss(logits[:1], labels[:1], k=5, only_wrong=True)["index"] == []


def test_summarize_keys_stable():
    logits = torch.nn.functional.one_hot(PREDS, 3).float() * 4
    s = metrics.summarize(logits, LABELS, ["a", "b", "c"])
    assert {"n", "accuracy", "loss", "per_class", "confusion_matrix", "most_confused"} <= set(s)
    assert s["n"] == 9 and s["accuracy"] == pytest.approx(5 / 9)
    assert s["confusion_matrix"] == CM
    assert [pc["support"] for pc in s["per_class"]] == [3, 2, 4]
    assert s["confusion_matrix_normalized"][2] == pytest.approx([0.25, 0.25, 0.5])


# ---------------------------------------------------------------- trainlab evaluate

@pytest.fixture
def idx_run(tmp_path):
    """A tiny run trained on an IDX folder (so the CLI can load its data again), with some errors."""
    data_dir = write_idx_folder(tmp_path / "data", classes=CLOTHES)
    # a low rate, one epoch of 8 steps: the model still makes mistakes to rank (84% right)
    return train_tiny(tmp_path / "runs", dataset=f"idx:{data_dir}", recipe="textbook", lr=1e-4, epochs=1,
                      batch_size=64, name="r")


def test_evaluate_cli_tables_and_files(cli, idx_run):
    run = idx_run.run_dir
    done = cli("evaluate", run, "--top", "5")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for word in ("precision", "recall", "F1", "macro avg", "overall", "shirt", "highest-loss test examples"):
        assert word in out
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["data_matches_training"] is True
    assert ev["test"]["accuracy"] == pytest.approx(idx_run.test_accuracy)
    assert ev["test"]["accuracy"] < 1  # the premise: mistakes to rank and pairs to list
    assert len(ev["highest_loss"]) == 5
    assert ev["highest_loss"][0]["loss"] >= ev["highest_loss"][-1]["loss"]
    worst = ev["test"]["most_confused"][0]
    assert worst["count"] > 0 and worst["true"] != worst["predicted"]
    assert "most confused pairs" in out
    pairs = out[out.index("most confused pairs"):]
    assert worst["true"] in pairs and worst["predicted"] in pairs
    with open(run / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == CLOTHES
    assert sum(int(r["support"]) for r in rows) == 200
    with open(run / "confusion_matrix.csv") as f:
        cm = list(csv.reader(f))
    assert cm[0][1:] == CLOTHES
    assert sum(int(v) for row in cm[1:] for v in row[1:]) == 200
    assert ev["test"]["confusion_matrix"] == [[int(v) for v in row[1:]] for row in cm[1:]]
    for fig in ("confusion_matrix", "per_class", "misclassified", "samples", "curves"):
        assert (run / "plots" / f"{fig}.png").stat().st_size > 1000
        assert (run / "plots" / f"{fig}.svg").exists()


def test_evaluate_cli_checkpoint_file_writes_beside_it(cli, idx_run, tmp_path):
    import shutil

    ckpt = tmp_path / "elsewhere" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(idx_run.run_dir / "model.pt", ckpt)
    done = cli("evaluate", ckpt, "--no-plots")
    assert done.returncode == 0, done.stderr
    assert (ckpt.parent / "evaluation.json").exists() and (ckpt.parent / "per_class.csv").exists()
    assert not (ckpt.parent / "plots").exists()


def test_evaluate_cli_missing_path_is_one_line(cli, tmp_path):
    done = cli("evaluate", tmp_path / "nope")
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr
