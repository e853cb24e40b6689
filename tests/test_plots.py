"""Every figure writes a valid PNG and SVG, handles the awkward inputs, and needs no display."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from conftest import make_images

from trainlab import plots
from trainlab.errors import TrainlabError
from trainlab.store import runs

CLASSES = [f"class {i}" for i in range(10)]


def history(n=4, offset=0.0):
    return [{"epoch": e, "train_loss": 1 / e + offset, "val_loss": 1.2 / e + offset, "test_loss": 1.25 / e + offset,
             "train_acc": 1 - 0.3 / e, "val_acc": 0.9 - 0.3 / e, "test_acc": 0.88 - 0.3 / e, "lr": 1e-3}
            for e in range(1, n + 1)]


def check(saved: plots.Saved, min_px=(200, 200)):
    from PIL import Image

    assert saved.png.suffix == ".png" and saved.svg.suffix == ".svg"
    with Image.open(saved.png) as im:
        assert im.format == "PNG" and im.size[0] >= min_px[0] and im.size[1] >= min_px[1]
        px = np.asarray(im.convert("L"))
    assert px.std() > 5, "the figure is blank"
    root = ET.parse(saved.svg).getroot()
    assert root.tag.endswith("svg")


def test_curves(tmp_path):
    rows = history()
    rows.insert(2, {"event": "resume", "from": "last.pt", "epoch": 2, "step": 0})  # a marker, not an epoch
    saved = plots.curves(rows, tmp_path / "curves.png", "run")
    assert saved.png == tmp_path / "curves.png" and saved.svg == tmp_path / "curves.svg"
    check(saved)
    # no validation split: still drawn
    check(plots.curves([{k: v for k, v in r.items() if not k.startswith("val")} for r in history()],
                       tmp_path / "noval"))


def test_epoch_rows_skips_markers_and_keeps_last_of_a_repeated_epoch():
    rows = [{"epoch": 1, "x": 1}, {"epoch": 2, "x": 2}, {"event": "resume", "epoch": 2}, {"epoch": 2, "x": 3},
            {"event": "fork", "epoch": 3}, {"epoch": 3, "x": 4}]
    assert [r["x"] for r in runs.epoch_rows(rows)] == [1, 3, 4]


def test_per_class_bars_and_nan(tmp_path):
    per_class = [{"class": c, "accuracy": a} for c, a in zip(CLASSES, np.linspace(0.5, 1, 10))]
    per_class[3]["accuracy"] = float("nan")  # a class absent from the test split
    per_class[4]["accuracy"] = None  # as read back from strict JSON
    check(plots.per_class_bars(per_class, tmp_path / "bars", overall=0.8))


def test_confusion_heatmap(tmp_path):
    cm = torch.randint(0, 50, (10, 10)) + torch.eye(10, dtype=torch.long) * 500
    cm[9] = 0  # empty row: no division by zero
    check(plots.confusion_heatmap(cm.tolist(), CLASSES, tmp_path / "cm"))


def test_misclassified_and_sample_grids(tmp_path):
    images, labels = make_images(60)
    check(plots.misclassified_grid(torch.from_numpy(images[:11]), [0] * 11, [1] * 11, [0.9] * 11, CLASSES,
                                   tmp_path / "wrong"))
    check(plots.misclassified_grid(images[:0], [], [], [], CLASSES, tmp_path / "none"), min_px=(100, 100))
    check(plots.sample_grid(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), CLASSES,
                            tmp_path / "samples", per_class=4))
    # float, normalized, 3-channel images are stretched per image for display
    colour = torch.randn(5, 3, 16, 16)
    check(plots.misclassified_grid(colour, [0] * 5, [1] * 5, [0.5] * 5, CLASSES, tmp_path / "rgb"), min_px=(100, 100))


def test_resume_and_compare_overlays(tmp_path):
    parent = history(3)
    with_state = history(6)[3:]
    without = history(6, offset=0.2)[3:]
    check(plots.resume_overlay(with_state, without, 3, tmp_path / "resume", parent=parent))
    check(plots.resume_overlay(history(6), history(6, 0.1), 3, tmp_path / "resume-noparent"))
    check(plots.compare_overlay({"a": history(5), "b": history(3, 0.1), "empty": []}, tmp_path / "cmp"))


def test_svg_is_reproducible(tmp_path):
    a = plots.curves(history(), tmp_path / "a")
    b = plots.curves(history(), tmp_path / "b")
    assert a.svg.read_bytes() == b.svg.read_bytes()


def test_matplotlib_is_imported_lazily_and_pyplot_never():
    code = ("import sys, trainlab.plots, trainlab.analysis.evaluation, trainlab.analysis.report, trainlab.analysis.compare, "
            "trainlab.cli.reports, trainlab.training.tensorboard\n"
            "assert 'matplotlib' not in sys.modules, 'imported at module load'\n"
            "import tempfile, pathlib\n"
            "trainlab.plots.curves([{'epoch': 1, 'train_loss': 1.0}], pathlib.Path(tempfile.mkdtemp()) / 'c')\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)


def test_missing_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(TrainlabError, match=r"pip install trainlab\[report\]"):
        plots.curves(history(), tmp_path / "c")
