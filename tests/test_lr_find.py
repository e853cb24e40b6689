"""The learning-rate range test (trainlab.training.lr_find): a suggestion by a stated rule,
divergence noticed, every random generator and every run folder left as they were."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import TINY_RUN

from trainlab.errors import ConfigError
from trainlab.training.lr_find import lr_find

CFG = {**TINY_RUN, "precision": "32"}


def test_the_suggestion_is_a_tenth_of_the_rate_at_the_lowest_smoothed_loss(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = lr_find({**CFG, "runs_dir": str(tmp_path / "runs")}, data=tiny_data, steps=60, seeds=(0, 1), end_lr=10)
    curve = r.median()
    assert r.suggestion == pytest.approx(r.lrs[curve.index(min(curve))] / 10)
    assert r.lrs[0] == pytest.approx(1e-6) and r.lrs == sorted(r.lrs)
    assert set(r.losses) == {0, 1} and "a tenth of it" in r.rule
    assert r.stopped and all(w.startswith("diverged at lr") for w in r.stopped.values())  # 10 is far too high
    assert all(len(v) < 60 for v in r.losses.values())
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing written


def test_the_global_random_generators_are_left_as_they_were(tiny_data):
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    threads = torch.get_num_threads()
    lr_find({**CFG, "threads": 1}, data=tiny_data, steps=20)
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2]) and torch.get_num_threads() == threads


def test_the_same_seed_gives_the_same_curve(tiny_data):
    a = lr_find(CFG, data=tiny_data, steps=30, seeds=(3,))
    b = lr_find(CFG, data=tiny_data, steps=30, seeds=(3,))
    assert a.losses == b.losses


@pytest.mark.parametrize("kw, words", [
    ({"steps": 5}, "steps = 5 is invalid"),
    ({"start_lr": 1.0, "end_lr": 0.1}, "need 0 < start < end"),
    ({"start_lr": 0.0}, "need 0 < start < end"),
    ({"seeds": ()}, "seeds must be"),
])
def test_bad_ranges_are_refused_in_one_sentence(tiny_data, kw, words):
    with pytest.raises(ConfigError, match=words):
        lr_find(CFG, data=tiny_data, **kw)


def test_the_command_writes_the_curve_and_says_the_rule(tmp_path, cli):
    from conftest import write_idx_folder

    idx = write_idx_folder(tmp_path / "idx")
    out = tmp_path / "lrf"
    done = cli("lr-find", "--dataset", f"idx:{idx}", "--model", "mlp", "--val-size", "100", "--batch-size", "32",
               "--threads", "1", "--steps", "40", "--seeds", "0,1", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "suggested lr: " in done.stdout and "a tenth of it" in done.stdout
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["seeds"] == [0, 1] and len(saved["lrs"]) == 40 and (out / "lr_find.png").stat().st_size > 1000
    bad = cli("lr-find", "--dataset", f"idx:{idx}", "--seeds", "0,x", "--out", out)
    assert bad.returncode == 2 and "--seeds '0,x' is invalid" in bad.stderr
