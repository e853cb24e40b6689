"""--val-every STEPS (training.loop.fit's mid-epoch validation): early stopping and best.pt act
mid-epoch, a mid-epoch best.pt resumes exactly, metrics.jsonl marks those rows with "step" and
its readers (epoch rows, resume's truncation, compare) take them in stride."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY_RUN, assert_resume_bitwise

import trainlab
from trainlab.analysis.compare import compare_runs, load_run
from trainlab.config import resolve
from trainlab.errors import ConfigError, TrainlabError
from trainlab.store import runs
from trainlab.store.schema import load_checkpoint

# 600 - 100 samples at batch 32: 16 steps an epoch; validation every 5 steps (5, 10, 15, then the
# epoch end at 16, 21, ...); the tiny data's val_loss is lowest early, so patience 3 stops mid-epoch
STOPS = {**TINY_RUN, "epochs": 4, "val_every": 5, "patience": 3}


def weights(path):
    return load_checkpoint(path)["model"]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_val_every_stops_early_mid_epoch_and_resumes_exactly(tmp_path, tiny_data):
    full = assert_resume_bitwise(STOPS, tmp_path, step=12, train_kw={"data": tiny_data},
                                 resume_kw={"data": tiny_data})
    last = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    assert full.results["stopped"] == "early-stop"
    assert last["step"] > 0 and last["global_step"] % 16 != 0  # the stop is mid-epoch
    best = load_checkpoint(tmp_path / "full" / "checkpoints" / "best.pt")
    assert best["step"] > 0 and best["partial"] is not None  # a mid-epoch best holds its partial epoch
    assert same(best["model"], weights(tmp_path / "cut" / "checkpoints" / "best.pt"))
    # every metrics row of the uninterrupted run, in the resumed one too (resume cut the rows after
    # its checkpoint, mid-epoch validations included, and wrote them again)
    def rows(name):
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in runs.read_metrics(tmp_path / name)
                if "event" not in r]
    assert rows("cut") == rows("full")
    mid = [r for r in rows("full") if "step" in r]
    assert mid and all(set(r) == {"epoch", "step", "global_step", "lr", "val_loss", "val_acc"} for r in mid)


def test_a_mid_epoch_best_pt_resumes_exactly(tmp_path, tiny_data):
    cfg = {**TINY_RUN, "epochs": 2, "val_every": 5, "runs_dir": str(tmp_path)}
    full = trainlab.train({**cfg, "name": "full"}, data=tiny_data, progress=False)
    best = load_checkpoint(full.run_dir / "checkpoints" / "best.pt")
    assert best["step"] > 0  # (the tiny data's best val_loss is mid-epoch)
    shutil.copytree(full.run_dir, tmp_path / "again")
    trainlab.resume(tmp_path / "again", data=tiny_data, progress=False, from_checkpoint="best.pt")
    assert same(weights(full.run_dir / "checkpoints" / "last.pt"), weights(tmp_path / "again" / "checkpoints" / "last.pt"))


def test_the_readers_take_mid_epoch_rows_in_stride(tmp_path, tiny_data):
    run = trainlab.train({**TINY_RUN, "val_every": 4, "runs_dir": str(tmp_path)}, data=tiny_data, progress=False)
    rows = runs.read_metrics(run.run_dir)
    assert [r["epoch"] for r in runs.epoch_rows(rows)] == [1, 2]  # the epoch rows only
    record = load_run(run.run_dir)
    assert [r["epoch"] for r in record.history] == [1, 2] and "train_loss" in record.history[-1]
    compare_runs([run.run_dir])


def test_the_metrics_bound_allows_the_validations_the_config_asks_for(tmp_path):
    (tmp_path / "config.toml").write_text("epochs = 1\nval_every = 1\n")
    row = {"epoch": 1, "step": 1, "global_step": 1, "lr": 0.1, "val_loss": 1.0, "val_acc": 0.5}
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for _ in range(1500)))
    assert len(runs.read_metrics(tmp_path)) == 1500
    (tmp_path / "config.toml").write_text("epochs = 1\n")  # no mid-epoch validation: that many rows is not a run's
    with pytest.raises(TrainlabError, match="not a metrics log"):
        runs.read_metrics(tmp_path)


def test_a_string_step_in_a_row_is_refused_by_name(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": "x"}) + "\n")
    with pytest.raises(TrainlabError, match="step"):
        runs.read_metrics(tmp_path)


@pytest.mark.parametrize("values, word", [({"val_every": -1}, "val_every"), ({"val_every": 1.5}, "val_every"),
                                          ({"val_every": 5, "monitor": "train_loss"}, "val_every")])
def test_bad_val_every_is_one_sentence(values, word):
    with pytest.raises(ConfigError, match=word):
        resolve(values)


def test_more_validations_an_epoch_than_a_log_holds_are_refused_before_training(tmp_path, tiny_data, monkeypatch):
    from trainlab.store import history

    monkeypatch.setattr(history, "MAX_VALIDATIONS_PER_EPOCH", 3)  # 16 steps: every 5 gives 3, every 4 gives 4
    trainlab.train({**TINY_RUN, "epochs": 1, "val_every": 5, "runs_dir": str(tmp_path)}, data=tiny_data,
                   progress=False)
    with pytest.raises(ConfigError, match="val_every"):
        trainlab.train({**TINY_RUN, "epochs": 1, "val_every": 4, "runs_dir": str(tmp_path)}, data=tiny_data,
                       progress=False)
    # val_every counts optimizer steps: 16 batches at accumulate 4 are 4 steps, 4 validations at 1
    trainlab.train({**TINY_RUN, "epochs": 1, "val_every": 2, "accumulate": 4, "runs_dir": str(tmp_path),
                    "name": "acc"}, data=tiny_data, progress=False)
    with pytest.raises(ConfigError, match="4 optimizer steps"):
        trainlab.train({**TINY_RUN, "epochs": 1, "val_every": 1, "accumulate": 4, "runs_dir": str(tmp_path),
                        "name": "acc1"}, data=tiny_data, progress=False)


class StepCounter(trainlab.Callback):
    """State a user's callback keeps per optimizer step: it must be in every checkpoint, a
    mid-epoch best.pt included, as of that checkpoint's step."""
    state_key = "step_counter"

    def __init__(self):
        self.n = 0

    def on_step_end(self, run):
        self.n += 1

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_a_mid_epoch_best_pt_holds_its_steps_hooks(tmp_path, tiny_data):
    cfg = {**TINY_RUN, "epochs": 2, "val_every": 5, "runs_dir": str(tmp_path)}
    counter = StepCounter()
    full = trainlab.train({**cfg, "name": "full"}, data=tiny_data, progress=False, callbacks=[counter])
    best = load_checkpoint(full.run_dir / "checkpoints" / "best.pt")
    assert best["step"] > 0 and best["callbacks"]["step_counter"] == {"n": best["global_step"]}
    shutil.copytree(full.run_dir, tmp_path / "again")
    again = StepCounter()  # a kill -9 after the mid-epoch best: the resume starts from it
    trainlab.resume(tmp_path / "again", data=tiny_data, progress=False, from_checkpoint="best.pt",
                    callbacks=[again])
    assert again.n == counter.n == load_checkpoint(full.run_dir / "checkpoints" / "last.pt")["global_step"]
