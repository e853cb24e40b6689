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


# ------------------------------------------------ every run option applied, or refused by name

def test_lr_find_on_a_folder_uses_the_image_size_and_skip_bad(tmp_path, cli):
    """`--image-size 64` finds the rate on 64-pixel images (it was accepted and ignored), and
    `--skip-bad` leaves a broken file out as training does."""
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "photos", per_class=12, size=(40, 32), mode="L")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    common = ("lr-find", "--dataset", f"folder:{root}", "--model", "mlp", "--val-size", "4", "--batch-size", "8",
              "--threads", "1", "--steps", "20", "--image-size", "64")
    refused = cli(*common, "--out", tmp_path / "a")
    assert refused.returncode == 1 and "broken.png" in refused.stderr and "--skip-bad" in refused.stderr
    done = cli(*common, "--skip-bad", "--out", tmp_path / "b")
    assert done.returncode == 0, done.stderr
    assert "1x64x64 images" in done.stdout
    assert json.loads((tmp_path / "b" / "lr_find.json").read_text())["input_shape"] == [1, 64, 64]


def _spy_sessions(monkeypatch) -> list:
    from trainlab.training import lr_find as lr_find_module

    made = []

    class Spy(lr_find_module.Session):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)
    monkeypatch.setattr(lr_find_module, "Session", Spy)
    return made


def test_lr_find_starts_from_init_from_with_the_body_frozen_on_the_per_class_subset(tiny_data, tmp_path,
                                                                                    monkeypatch):
    """The range test is run on the model the run will train: init_from's weights, the frozen
    body staying exactly those weights, the head's rate moving, the per-class subset's steps."""
    from conftest import train_tiny

    parent = train_tiny(tmp_path / "runs", tiny_data, epochs=1)
    saved = torch.load(parent.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    made = _spy_sessions(monkeypatch)
    lr_find({**CFG, "init_from": str(parent.run_dir), "freeze": "body", "train_per_class": 5}, data=tiny_data,
            steps=12, end_lr=1e-2)
    (s,) = made
    weights = s.model.state_dict()
    frozen = [n for n, p in s.model.named_parameters() if not p.requires_grad]
    assert frozen and all(torch.equal(weights[n], saved[n]) for n in frozen)  # loaded, then never stepped
    moved = [n for n, p in s.model.named_parameters() if p.requires_grad]
    assert moved and any(not torch.equal(weights[n], saved[n]) for n in moved)
    assert len(s.loaders["train"]) == 2  # 5 per class x 10 classes = 50 images in batches of 32


def test_lr_find_applies_the_runs_checks(tiny_data):
    with pytest.raises(ConfigError, match="batch_size = 4000 is invalid"):
        lr_find({**CFG, "batch_size": 4000}, data=tiny_data, steps=12)


def _subcommands():
    import argparse

    from trainlab.cli.main import build_parser

    found = {}

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[f"{prefix}{name}"] = sub
                    walk(sub, f"{prefix}{name} ")
    walk(build_parser(), "")
    return found


def test_every_command_applies_each_run_option_it_accepts_or_refuses_it(tmp_path, cli):
    """The walk: every command x every run option. train is the run; lr-find builds the run's own
    parts (so it applies each key they use) and refuses the rest by name; every other command
    accepts only the few run options the table below says it applies (each tested where its
    command is)."""
    from trainlab.training.lr_find import NOT_USED

    commands = _subcommands()
    run_flags = {o for g in commands["train"]._action_groups if g.title == "run" for a in g._group_actions
                 for o in a.option_strings if not o.startswith("--no-")}
    applied_elsewhere = {  # command -> the run options it takes, each applied by that command
        "export": {"--data-dir"}, "predict": {"--data-dir", "--device"}, "evaluate": {"--data-dir", "--device"},
        "report": {"--data-dir", "--device"}, "bench-device": {"--model", "--threads"},
        "serve": {"--device"},  # tests/test_serve.py
        "data info": {"--data-dir", "--dataset", "--image-size"},
        "experiment fashion": {"--data-dir", "--dataset", "--device", "--name", "--quiet", "--runs-dir", "--seed",
                               "--threads", "--val-size"},
    }
    for name, parser in commands.items():
        if name in ("train", "lr-find"):
            continue
        accepted = {o for a in parser._actions for o in a.option_strings} & run_flags
        assert accepted == applied_elsewhere.get(name, set()), f"{name} accepts {sorted(accepted)}"
    lr_flags = {o for a in commands["lr-find"]._actions for o in a.option_strings}
    assert run_flags <= lr_flags
    from trainlab.config import RUN_FIELDS
    from trainlab.recipes import RECIPE_FIELDS

    assert set(NOT_USED) <= set(RUN_FIELDS) | set(RECIPE_FIELDS)
    values = {"epochs": "3", "schedule": "cosine", "warmup_epochs": "1", "ema": "0.9", "patience": "2",
              "min_delta": "0.1", "monitor": "val_acc", "mode": "max", "unfreeze_at": "2", "save_every": "1",
              "keep": "2", "name": "x", "rerun": "refuse", "val_every": "5", "keep_top": "2", "track": "mlflow",
              "log_every": "5", "plateau_factor": "0.5", "plateau_patience": "3", "step_gamma": "0.5",
              "step_milestones": "2"}
    for key in NOT_USED:
        flag = f"--{key.replace('_', '-')}"
        argv = [flag] if key in ("tta_flip", "tensorboard", "test_every_epoch") else [flag, values[key]]
        done = cli("lr-find", *argv, "--out", tmp_path / "never")
        assert done.returncode == 2, (key, done.stderr)
        assert f"lr-find does not use {flag}" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_lr_find_checks_out_before_the_test(tmp_path, cli):
    taken = tmp_path / "a-file"
    taken.write_text("mine")
    done = cli("lr-find", "--dataset", f"idx:{tmp_path / 'no-such-data'}", "--out", taken)
    assert done.returncode == 2 and "is not a folder" in done.stderr  # not the data's error: --out first
    assert taken.read_text() == "mine"


def test_lr_find_steps_as_the_run_steps_accumulation_and_batch_transforms_included(tiny_data, monkeypatch):
    """The suggested rate is for the run's own step: N micro-batches per optimizer step under
    --accumulate N, each mixed when the recipe mixes; the curve has one point per optimizer step."""
    from trainlab.training import lr_find as module

    seen, real = {}, module.fit

    def spy(*args, **kw):
        seen.update(accumulate=kw["parts"].accumulate, transforms=kw["transforms"], epochs=kw["epochs"])
        return real(*args, **kw)

    monkeypatch.setattr(module, "fit", spy)
    r = lr_find({**CFG, "accumulate": 4, "mixup": 0.2}, data=tiny_data, steps=20, end_lr=1e-2)
    assert seen["accumulate"] == 4 and len(seen["transforms"]) == 1
    assert seen["epochs"] == 5  # 16 batches an epoch are 4 optimizer steps: 20 steps take 5 epochs
    assert len(r.lrs) == 20 and len(r.losses[0]) == 20
