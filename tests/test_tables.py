"""The one percent formatter and the shared tables: every command and the report print
a number, a per-class row and a confused pair the same way (the README shows these lines)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trainlab.analysis.tables import (
    CONFUSED_HEADERS,
    confused_rows,
    per_class_prf_table,
    per_class_rows,
    per_class_table,
    predictions_table,
    printable,
    run_summary,
    table,
)
from trainlab.metrics import percent

NAN = float("nan")


@pytest.mark.parametrize("x, digits, text", [
    (0.8901, 2, "89.01%"), (1, 2, "100.00%"), (0.0, 2, "0.00%"), (0.8512, 1, "85.1%"),
    (0.5, 0, "50%"), (np.float32(0.25), 2, "25.00%"),
    (NAN, 2, "n/a"), (None, 2, "n/a"), ("0.5", 2, "n/a"),  # missing, undefined or not a number
])
def test_percent(x, digits, text):
    assert percent(x, digits) == text


def test_percent_is_pythons_percent_format():
    for x in np.linspace(0, 1, 1001).tolist():
        for digits in (0, 1, 2):
            assert percent(x, digits) == format(x, f".{digits}%")


def test_table_aligns_first_column_left_and_the_rest_right():
    assert table(["a", "bb"], [["xyz", 1], ["q", 22]]).splitlines() == [
        "a    bb", "---  --", "xyz   1", "q    22"]
    assert table(["#", "name"], [[1, "ab"]], "rl").splitlines() == ["#  name", "-  ----", "1  ab  "]


def summary() -> dict:
    """metrics.summarize()'s shape for two classes, one never predicted (NaN precision)."""
    return {
        "n": 2000, "accuracy": 0.8901, "loss": 0.3,
        "per_class": [
            {"class": "T-shirt/top", "accuracy": 0.777, "precision": 0.8672, "recall": 0.777,
             "f1": 0.8196, "support": 1000},
            {"class": "Trouser", "accuracy": 0.0, "precision": NAN, "recall": 0.0, "f1": 0.0,
             "support": 1000},
        ],
        "macro": {"precision": 0.8672, "recall": 0.3885, "f1": 0.4098},
        "most_confused": [{"true": "Trouser", "predicted": "T-shirt/top", "count": 1000, "rate": 1.0},
                          {"true": "T-shirt/top", "predicted": "Trouser", "count": 223, "rate": 0.223}],
    }


def test_per_class_table_as_the_readme_shows_it():
    assert per_class_table(summary()).splitlines() == [
        "class        accuracy  precision      f1     n",
        "-----------  --------  ---------  ------  ----",
        "T-shirt/top    77.70%     86.72%  81.96%  1000",
        "Trouser         0.00%        n/a   0.00%  1000",
        "overall        89.01%                     2000",
    ]


def test_per_class_rows_read_back_from_json():
    # strict JSON has no NaN: evaluation.json holds null, which prints as n/a too
    s = summary()
    s["per_class"][1]["precision"] = None
    del s["n"]
    rows = per_class_rows(s)
    assert rows[1][2] == "n/a" and rows[-1] == ["overall", "89.01%", "", "", ""]


def test_per_class_prf_table_has_macro_and_overall_rows():
    lines = per_class_prf_table(summary()).splitlines()
    assert lines[0].split() == ["class", "n", "recall", "(=", "accuracy)", "precision", "F1"]
    assert lines[-2].split() == ["macro", "avg", "38.85%", "86.72%", "40.98%"]
    assert lines[-1].split() == ["overall", "2000", "89.01%"]


def test_confused_rows():
    assert CONFUSED_HEADERS == ["true", "predicted as", "count", "share of true class"]
    assert confused_rows(summary()) == [["Trouser", "T-shirt/top", 1000, "100.00%"],
                                        ["T-shirt/top", "Trouser", 223, "22.30%"]]
    assert confused_rows({"most_confused": []}) == []


def test_run_summary_of_a_train_result():
    result = SimpleNamespace(test=summary(), history=[{}] * 10, device="cpu (2 threads)",
                             results={"seconds_per_epoch": 0.714, "test_split": "held-out 10k split"})
    lines = run_summary("== baseline", result).splitlines()
    assert lines[0] == "== baseline"
    assert lines[1] == ("  test accuracy 89.01% on the held-out 10k split | 10 epochs | 0.71 s/epoch | "
                        "device cpu (2 threads)")
    assert lines[2:-1] == per_class_table(summary()).splitlines()
    assert lines[-1] == "  most confused: Trouser -> T-shirt/top (1000); T-shirt/top -> Trouser (223)"


def test_run_summary_says_which_model_the_one_test_accuracy_is_of():
    result = SimpleNamespace(test=summary(), history=[{}] * 10, device="cpu",
                             results={"seconds_per_epoch": 0.714, "test_split": "held-out 10k split",
                                      "tested": {"weights": "best", "epoch": 7, "ema": False,
                                                 "label": "epoch 7 (best val_loss)"}})
    assert run_summary("r", result).splitlines()[1] == (
        "  test accuracy 89.01% of the model at epoch 7 (best val_loss) on the held-out 10k split | "
        "10 epochs | 0.71 s/epoch | device cpu")


@pytest.mark.parametrize("tested", ["x", [1], {"label": 5}, None])
def test_run_summary_of_a_finished_runs_file_with_a_damaged_tested_leaves_it_out(tested):
    result = SimpleNamespace(test=summary(), history=[{}], device="cpu",
                             results={"seconds_per_epoch": 1.0, "tested": tested})
    assert run_summary("r", result).splitlines()[1].startswith("  test accuracy 89.01% on the test split |")


def test_predictions_table():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8]])
    classes = ["a", "b", "c"]
    assert predictions_table(probs, classes).splitlines() == [
        "#  predicted  prob   next            ",
        "-  ---------  -----  ----------------",
        "0  a          70.0%  b 20.0%, c 10.0%",
        "1  c          80.0%  b 15.0%, a 5.0% ",
    ]
    lines = predictions_table(probs, classes, truth=torch.tensor([0, 1])).splitlines()
    assert lines[0].split() == ["#", "true", "predicted", "prob", "next"]
    assert lines[2].split()[-1] != "wrong" and lines[3].split()[-1] == "wrong"


@pytest.mark.parametrize("name,shown", [
    ("cat", "cat"),
    ("a.png   dog  99.9%\nsecret.png", "a.png   dog  99.9%\\nsecret.png"),  # a forged row stays in its cell
    ("dog\x1b[2J", "dog\\x1b[2J"),  # an escape sequence is shown, not run by the terminal
    ("x\udcffy.png", "x\\udcffy.png"),  # an undecodable byte of a file name
    ("chat noir", "chat noir"),
])
def test_names_in_tables_cannot_forge_a_line(name, shown):
    assert printable(name) == shown
    out = table(["file", "class"], [[name, name]])
    assert out.count("\n") == 2 and shown in out


def test_a_file_name_in_an_error_stays_on_one_line(tmp_path, capsys):
    from trainlab.cli.main import main

    bad = tmp_path / "a\nFAKE: all good"
    code = main(["data", "info", "--dataset", f"folder:{bad}"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "a\\nFAKE: all good" in err
