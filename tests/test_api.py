"""The library's front (`import trainlab`): evaluate_run on a run folder and on checkpoint
files, checked against the run's own results.json and metrics, and against predictions made
by hand from load_model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_images, tiny_dataset, train_tiny

import trainlab
from trainlab.store.checkpoint import load_checkpoint

# A low rate and 3 short epochs: a model that is right on some classes and wrong on others
# (so agreeing per class means something), in float32 (the per-epoch figures are then those a
# later evaluation recomputes), with flip TTA (which evaluate_run must apply as training did),
# and a checkpoint kept every epoch.
RUN = {"recipe": "textbook", "lr": 1e-4, "batch_size": 64, "epochs": 3, "precision": "32",
       "hflip": True, "tta_flip": True, "save_every": 1, "keep": 0, "name": "api"}


@pytest.fixture(scope="module")
def data():
    return tiny_dataset()


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    return train_tiny(tmp_path_factory.mktemp("runs"), data, **RUN)


def by_hand(path, data) -> list[float]:
    """Per-class test accuracy of the model in `path`, from load_model and plain torch: the
    images normalized with the checkpoint's mean and std, flip TTA as its config says."""
    model, ckpt = trainlab.load_model(path, map_location="cpu")
    assert not model.training  # load_model gives an eval-mode model
    x = (data.test_x.float() / 255 - torch.tensor(ckpt["mean"]).view(1, -1, 1, 1)) \
        / torch.tensor(ckpt["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        probs = model(x).softmax(1)
        if ckpt["config"]["tta_flip"]:
            probs = (probs + model(x.flip(3)).softmax(1)) / 2
    preds, labels = probs.argmax(1), data.test_y.long()
    return [int(((preds == c) & (labels == c)).sum()) / int((labels == c).sum()) for c in range(data.num_classes)]


def per_class(summary) -> list[float]:
    return [row["accuracy"] for row in summary["per_class"]]


def test_evaluate_run_agrees_with_the_runs_results_and_with_a_computation_by_hand(run, data):
    summary = trainlab.evaluate_run(run.run_dir, data=data)
    results = json.loads((run.run_dir / "results.json").read_text())["test"]
    got = per_class(summary)
    assert summary["n"] == results["n"] == 200
    assert [row["class"] for row in summary["per_class"]] == data.classes
    assert [row["support"] for row in summary["per_class"]] == [row["support"] for row in results["per_class"]]
    assert got == pytest.approx(per_class(results), abs=1e-9)
    assert got == pytest.approx(by_hand(run.run_dir, data), abs=1e-9)
    assert summary["accuracy"] == pytest.approx(results["accuracy"], abs=1e-9)
    assert summary["confusion_matrix"] == results["confusion_matrix"]
    assert summary["loss"] == pytest.approx(results["loss"], rel=1e-5)
    # the premise: some classes right, some wrong, so equal lists are not equal by chance
    assert min(got) < 0.5 and max(got) == 1.0


def test_evaluate_run_on_a_checkpoint_file_evaluates_that_checkpoint(run, data):
    ckpts = run.run_dir / "checkpoints"
    history = run.history
    best = load_checkpoint(ckpts / "best.pt")
    assert best["epoch"] == run.results["best"]["epoch"]
    summary = trainlab.evaluate_run(ckpts / "best.pt", data=data)
    assert per_class(summary) == pytest.approx(by_hand(ckpts / "best.pt", data), abs=1e-9)
    # the figure recorded at that epoch, evaluated then with the same weights and TTA
    assert summary["accuracy"] == pytest.approx(history[best["epoch"] - 1]["test_acc"], abs=1e-9)

    # another epoch's checkpoint gives that epoch's figures, not the final model's
    first = trainlab.evaluate_run(ckpts / "epoch-0001.pt", data=data)
    assert per_class(first) == pytest.approx(by_hand(ckpts / "epoch-0001.pt", data), abs=1e-9)
    assert first["accuracy"] == pytest.approx(history[0]["test_acc"], abs=1e-9)
    assert first["accuracy"] != pytest.approx(run.test_accuracy, abs=1e-3)


def test_evaluate_run_refuses_data_of_another_shape(run):
    from trainlab.data import from_arrays

    images, labels = make_images(40, size=14)
    small = from_arrays(images, labels, images, labels, name="small")
    with pytest.raises(trainlab.TrainlabError, match=r"takes \(1, 28, 28\) images.*\(1, 14, 14\)"):
        trainlab.evaluate_run(run.run_dir, data=small)
