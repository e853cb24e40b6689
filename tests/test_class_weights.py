"""Imbalanced classes: --class-weights auto|LIST (the loss's class weights, recorded) and
--balanced-sampler (a seeded draw with every class equally likely, exact on resume); the two
are refused together, a LIST of the wrong length in one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES, TINY_RUN, assert_resume_bitwise, idx_folder, make_images

import trainlab
from trainlab.analysis.report import class_balance_note
from trainlab.config import resolve
from trainlab.data import DeviceLoader, from_arrays
from trainlab.errors import ConfigError
from trainlab.store.schema import load_checkpoint
from trainlab.training.session import Session

idx_dir = idx_folder(400, 100)


@pytest.fixture(scope="module")
def imbalanced():
    """make_images' 10 classes, 1000 training images, with classes 7, 8, 9 cut to a tenth."""
    x, y = make_images(1000, seed=5)
    keep = np.ones(len(y), dtype=bool)
    for c in (7, 8, 9):
        rows = np.flatnonzero(y == c)
        keep[rows[10:]] = False
    sx, sy = make_images(200, seed=6)
    return from_arrays(x[keep], y[keep], sx, sy, name="imbalanced", classes=TINY_CLASSES)


def _train_counts(data, val_size=100, seed=0):
    idx, _ = data.train_val_indices(val_size, seed)
    return torch.bincount(data.train_y[idx], minlength=10).double()


def test_auto_is_the_inverse_frequency_with_mean_1_used_by_the_loss_and_recorded(imbalanced, tmp_path):
    r = trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "epochs": 1, "class_weights": "auto"},
                       data=imbalanced, progress=False)
    counts = _train_counts(imbalanced)
    expected = (1 / counts) / (1 / counts).mean()
    meta = json.loads((r.run_dir / "meta.json").read_text())
    results = json.loads((r.run_dir / "results.json").read_text())
    for record in (meta["class_balance"], results["class_balance"]):
        assert record["method"] == "class-weights" and record["class_weights"] == "auto"
        assert record["train_counts"] == counts.long().tolist()
        torch.testing.assert_close(torch.tensor(record["weights"], dtype=torch.float64), expected)
    assert results["class_balance"]["weights"][9] > 5 * results["class_balance"]["weights"][0]
    assert load_checkpoint(r.run_dir / "checkpoints" / "last.pt")["config"]["class_weights"] == "auto"
    assert "class_weights = \"auto\"" in (r.run_dir / "config.toml").read_text()
    note = class_balance_note(r.config.to_dict(), results)
    assert note.startswith("Class balance: loss weighted by class (auto, inverse training frequency): 0.")
    # the loss the step runs holds those weights (float32)
    s = Session(resolve({**TINY_RUN, "class_weights": "auto"}), imbalanced, progress=False)
    torch.testing.assert_close(s.loss_fn.weight, expected.float())


def test_a_class_the_training_split_lacks_gets_weight_0_and_the_rest_mean_1(imbalanced):
    x, y = make_images(500, seed=2)
    keep = y != 4
    data = from_arrays(x[keep], y[keep], x[:50], y[:50], name="no-fours", classes=TINY_CLASSES)
    s = Session(resolve({**TINY_RUN, "class_weights": "auto"}), data, progress=False)
    w = s.loss_fn.weight
    assert w[4] == 0 and torch.isfinite(w).all()
    assert float(w[torch.arange(10) != 4].mean()) == pytest.approx(1.0)


def test_a_given_list_is_used_as_is_and_recorded_as_given(imbalanced):
    s = Session(resolve({**TINY_RUN, "class_weights": "1,1,1,1,1,1,1,4,4,4.5"}), imbalanced, progress=False)
    assert s.loss_fn.weight.tolist() == [1, 1, 1, 1, 1, 1, 1, 4, 4, 4.5]
    assert s.class_balance["class_weights"] == "given"
    assert class_balance_note({"class_weights": "1,2"}, {"class_balance": s.class_balance}).startswith(
        "Class balance: loss weighted by class (given): 1, 1,")


@pytest.mark.parametrize("value", ["", "auto,1", "1,x", "1,nan", "1,-1", "0,0", "1,inf", "1e400", " , "])
def test_a_bad_class_weights_value_is_refused_in_one_sentence(value):
    with pytest.raises(ConfigError, match=r"^class_weights = .* is invalid: use auto, or one finite weight"):
        resolve({"class_weights": value})


def test_a_list_of_the_wrong_length_is_refused_in_one_sentence(imbalanced):
    with pytest.raises(ConfigError, match=r"^class_weights gives 3 weights but imbalanced has 10 classes; "
                                          r"give one weight per class in class order \(c0, c1, c2, c3, c4, "
                                          r"\.\.\.\), or auto$"):
        Session(resolve({**TINY_RUN, "class_weights": "1,2,3"}), imbalanced, progress=False)


def test_the_cli_refuses_a_wrong_length_and_both_corrections_together_with_exit_2(cli, idx_dir, tmp_path):
    base = ("train", "--dataset", f"idx:{idx_dir}", "--runs-dir", tmp_path, "--epochs", "1", "--quiet",
            "--val-size", "50")
    for extra, words in ((("--class-weights", "1,2"), "class_weights gives 2 weights but"),
                         (("--class-weights", "auto", "--balanced-sampler"),
                          "class_weights and balanced_sampler both correct for class imbalance")):
        r = cli(*base, *extra)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], r.stderr
        assert "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())  # refused before any run folder was made


def _numbered(labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images whose first pixel is the row's index: a served batch names its rows."""
    n = len(labels)
    images = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return images, torch.tensor(labels)


def _rows(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs)[:, 0, 0, 0].long(), torch.cat(ys)


def test_the_balanced_sampler_draws_every_class_equally_often_seeded_per_epoch():
    images, labels = _numbered([0] * 800 + [1] * 150 + [2] * 50)
    loader = DeviceLoader(images, labels, 100, mean=0.0, std=1.0, shuffle=True, seed=7, balanced=True)
    assert len(loader) == 10
    loader.set_epoch(0)
    rows, ys = _rows(loader)
    assert torch.equal(labels[rows], ys)  # each label is its row's
    share = torch.bincount(ys, minlength=3).double() / len(ys)
    assert ((share > 0.28) & (share < 0.39)).all(), share  # the plain epoch: 0.80 / 0.15 / 0.05
    assert len(rows.unique()) < len(rows)  # with replacement: the 50 rows of class 2 come back
    loader.set_epoch(0)
    assert torch.equal(_rows(loader)[0], rows)  # the same (seed, epoch): the same draw
    loader.set_epoch(1)
    assert not torch.equal(_rows(loader)[0], rows)
    loader.set_epoch(0, start_step=4)  # a resume mid-epoch serves the rest of the same draw
    assert torch.equal(_rows(loader)[0], rows[400:])
    other = DeviceLoader(images, labels, 100, mean=0.0, std=1.0, shuffle=True, seed=8, balanced=True)
    assert not torch.equal(_rows(other)[0], rows)


def test_the_balanced_sampler_shards_one_draw_across_ranks_and_serves_only_its_subset():
    images, labels = _numbered([0] * 90 + [1] * 10 + [2] * 100)
    subset = torch.arange(0, 100)  # the training rows: class 2 is not among them
    shards = [DeviceLoader(images, labels, 20, mean=0.0, std=1.0, shuffle=True, seed=1, balanced=True,
                           subset=subset, rank=r, world_size=2) for r in (0, 1)]
    whole = DeviceLoader(images, labels, 20, mean=0.0, std=1.0, shuffle=True, seed=1, balanced=True,
                         subset=subset)
    a, b, w = _rows(shards[0])[0], _rows(shards[1])[0], _rows(whole)[0]
    assert torch.equal(a, w[0::2]) and torch.equal(b, w[1::2])
    assert (w < 100).all() and set(labels[w].tolist()) == {0, 1}


@pytest.mark.parametrize("extra", [{"class_weights": "auto"}, {"balanced_sampler": True}],
                         ids=["class-weights", "balanced-sampler"])
def test_resume_mid_epoch_is_bitwise_with_each(imbalanced, tmp_path, extra):
    cfg = {**TINY_RUN, **extra}
    full = assert_resume_bitwise(cfg, tmp_path, 19, {"data": imbalanced}, {"data": imbalanced})
    results = json.loads((full.run_dir / "results.json").read_text())
    assert results["class_balance"]["method"] == ("class-weights" if "class_weights" in extra
                                                  else "balanced-sampler")


def test_the_balanced_sampler_changes_what_a_run_sees(imbalanced, tmp_path):
    """A run with the sampler on differs from the plain run; its report says which was used."""
    plain = trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "epochs": 1, "name": "plain"},
                           data=imbalanced, progress=False)
    bal = trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "epochs": 1, "name": "bal",
                          "balanced_sampler": True}, data=imbalanced, progress=False)
    a = load_checkpoint(plain.run_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(bal.run_dir / "checkpoints" / "last.pt")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert "class_balance" not in json.loads((plain.run_dir / "results.json").read_text())
    none = "Class balance: none (plain loss and sampling)."
    assert class_balance_note(plain.config.to_dict(), None) == none
    assert class_balance_note(bal.config.to_dict(), None).startswith("Class balance: balanced sampler")
