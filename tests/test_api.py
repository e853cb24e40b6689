"""The library's front (`import trainlab`): evaluate_run on a run folder and on checkpoint
files, checked against the run's own results.json and metrics, and against predictions made
by hand from load_model."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import make_images, tiny_dataset, train_tiny

import trainlab
from trainlab.store.schema import load_checkpoint

# A low rate and 3 short epochs: a model that is right on some classes and wrong on others
# (so agreeing per class means something), in float32 (the per-epoch figures are then those a
# later evaluation recomputes), with flip TTA (which evaluate_run must apply as training did),
# and a checkpoint kept every epoch.
RUN = {"recipe": "textbook", "lr": 1e-4, "batch_size": 64, "epochs": 3, "precision": "32",
       "hflip": True, "tta_flip": True, "save_every": 1, "keep": 0, "name": "api",
       "test_every_epoch": True}  # the per-epoch figures the checkpoints are checked against


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


# ---------------------------------------------------------------- train(model=...)

def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 10))


def test_an_nn_module_instance_trains_resumes_bitwise_and_is_asked_for_again(tiny_data, tmp_path):
    """train(cfg, model=nn.Sequential(...)) was refused ("expected str"); now it trains, records
    instance:Sequential, and evaluate / load_model / resume take the model again as model=."""
    from conftest import TINY_RUN, assert_resume_bitwise

    from trainlab.inference import load_model

    cfg = {**TINY_RUN, "runs_dir": str(tmp_path), "epochs": 3}
    full = trainlab.train({**cfg, "name": "full"}, data=tiny_data, model=_net(), progress=False)
    meta = json.loads((full.run_dir / "meta.json").read_text())
    assert meta["model_spec"]["name"] == "instance:Sequential"
    with pytest.raises(trainlab.ConfigError, match="given in memory .*model="):
        trainlab.evaluate_run(full.run_dir, data=tiny_data)
    summary = trainlab.evaluate_run(full.run_dir, data=tiny_data, model=_net())
    assert summary["accuracy"] == pytest.approx(full.test_accuracy)
    model, _ = load_model(full.run_dir, model=_net())
    assert isinstance(model, torch.nn.Sequential)
    assert_resume_bitwise(cfg, tmp_path / "again", 25, {"data": tiny_data, "model": _net},
                          {"data": tiny_data, "model": _net})


def test_an_importable_class_given_to_train_is_recorded_by_its_path(tiny_data, tmp_path, monkeypatch):
    from conftest import TINY_RUN

    (tmp_path / "givennets.py").write_text(
        "from torch import nn\n\n\nclass Small(nn.Module):\n"
        "    def __init__(self, num_classes, in_chans=1):\n        super().__init__()\n"
        "        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 784, num_classes))\n\n"
        "    def forward(self, x):\n        return self.net(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import givennets

    try:
        r = trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path / "runs")}, data=tiny_data, model=givennets.Small,
                           progress=False)
        assert json.loads((r.run_dir / "meta.json").read_text())["model_spec"]["name"] == "givennets:Small"
        summary = trainlab.evaluate_run(r.run_dir, data=tiny_data, allow_import=("givennets",))
        assert summary["accuracy"] == pytest.approx(r.test_accuracy)
    finally:
        sys.modules.pop("givennets", None)


def test_model_given_as_something_else_is_one_sentence(tiny_data, tmp_path):
    with pytest.raises(trainlab.ConfigError, match="give an nn.Module, or a class or function"):
        trainlab.train({"runs_dir": str(tmp_path)}, data=tiny_data, model=3)
