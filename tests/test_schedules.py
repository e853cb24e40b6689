"""The plateau and step schedules (training.schedules, training.optim.lr_multiplier): their curves,
plateau's state in the checkpoint, and each resumed bitwise, mid-epoch too."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_RUN, assert_resume_bitwise
from torch import nn

from trainlab.config import resolve
from trainlab.errors import ConfigError
from trainlab.recipes import get_recipe
from trainlab.store.schema import load_checkpoint
from trainlab.training.optim import build_optimizer, lr_multiplier
from trainlab.training.run import FitContext, FitState
from trainlab.training.schedules import Plateau

STEPS = 10  # per epoch


def test_step_multiplies_by_gamma_after_each_milestone_epoch():
    f = lr_multiplier(get_recipe("textbook", schedule="step", epochs=5, step_milestones=[1, 3], step_gamma=0.5),
                      STEPS)
    values = [f(s) for s in range(5 * STEPS)]
    assert values[:10] == [1.0] * 10 and values[10:30] == [0.5] * 20 and values[30:] == [0.25] * 20
    assert f(10**6) == 0.25  # past the plan: the last rate continues


def test_plateau_reduces_the_rate_after_patience_validations_without_improvement():
    model = nn.Linear(2, 2)
    recipe = get_recipe("textbook", schedule="plateau", lr=0.1)
    opt = build_optimizer(model, recipe)
    plateau = Plateau("val_loss", "min", factor=0.5, patience=2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(recipe, STEPS, plateau=plateau))
    plateau.scheduler = sched
    run = FitContext(model, opt, FitState())
    rates = []
    for value in [1.0, 0.9, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.85]:
        plateau.on_epoch_end(run, {"val_loss": value})
        rates.append(opt.param_groups[0]["lr"])  # the next step's rate, set at once
        opt.step()
        sched.step()
        assert {g["lr"] for g in opt.param_groups} == {rates[-1]}  # the LambdaLR keeps it
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.0125])
    assert plateau.state_dict() == {"best": 0.8, "counter": 0, "scale": 0.125}
    fresh = Plateau("val_loss", "min", factor=0.5, patience=2)
    fresh.load_state_dict(plateau.state_dict())
    assert fresh.state_dict() == plateau.state_dict()


def test_plateau_in_max_mode_and_without_a_schedule_object():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    plateau = Plateau("val_acc", "max", factor=0.1, patience=1)
    run = FitContext(model, opt, FitState())
    for value in [0.5, 0.6, 0.6]:
        plateau.on_epoch_end(run, {"val_acc": value})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1) and plateau.scale == pytest.approx(0.1)


@pytest.mark.parametrize("values, word", [
    ({"schedule": "step"}, "step_milestones"),  # step without milestones
    ({"step_milestones": [2]}, "step_milestones"),  # milestones without step
    ({"schedule": "step", "step_milestones": [3, 2]}, "step_milestones"),
    ({"schedule": "step", "step_milestones": "2,x"}, "step_milestones"),
    ({"schedule": "step", "step_milestones": [0]}, "step_milestones"),
    ({"step_gamma": 0.0}, "step_gamma"), ({"plateau_factor": 1.0}, "plateau_factor"),
    ({"plateau_patience": 0}, "plateau_patience"), ({"schedule": "exponential"}, "schedule"),
])
def test_bad_schedule_values_are_one_sentence(values, word):
    with pytest.raises(ConfigError, match=word):
        resolve(values)


def test_milestones_from_a_flag_are_a_list_recorded_as_one():
    cfg = resolve({"schedule": "step", "step_milestones": "2, 5"})
    assert cfg.train.step_milestones == [2, 5] and cfg.to_dict()["step_milestones"] == [2, 5]
    assert cfg.with_changes(epochs=3).train.step_milestones == [2, 5]


def test_step_resumes_bitwise_mid_epoch(tmp_path, tiny_data):
    # 16 steps an epoch: stopped at step 21, after the first milestone
    full = assert_resume_bitwise({**TINY_RUN, "epochs": 3, "schedule": "step", "step_milestones": [1, 2],
                                  "step_gamma": 0.5}, tmp_path, step=21, train_kw={"data": tiny_data},
                                 resume_kw={"data": tiny_data})
    lrs = [r["lr"] for r in full.history]
    assert lrs == pytest.approx([4e-3 * 0.5, 4e-3 * 0.25, 4e-3 * 0.25])


@pytest.mark.parametrize("val_every, step", [(0, 40), (5, 37)])
def test_plateau_resumes_bitwise_mid_epoch_with_its_state_in_the_checkpoint(tmp_path, tiny_data, val_every, step):
    cfg = {**TINY_RUN, "epochs": 4, "schedule": "plateau", "plateau_patience": 1, "plateau_factor": 0.5,
           "val_every": val_every}
    assert_resume_bitwise(cfg, tmp_path, step=step, train_kw={"data": tiny_data}, resume_kw={"data": tiny_data})
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    state = full["callbacks"]["plateau"]
    assert state["scale"] < 1  # the rate was reduced before the stop: the resume had to know it
    assert cut["callbacks"]["plateau"] == state
    assert full["optimizer"]["param_groups"][0]["lr"] == pytest.approx(4e-3 * state["scale"])


def test_a_run_saved_before_these_keys_existed_resumes(tmp_path, tiny_data):
    """An older run's config and checkpoint lack the new keys: it ran with their defaults, which is
    no change (before, the resume was refused: 'cannot change val_every: None -> 0')."""
    import tomllib

    import tomli_w

    import trainlab
    from trainlab.store.manifest import CheckpointDir

    class StopAt(trainlab.Callback):
        def on_step_end(self, run):
            return "test" if run.state.global_step == 20 else None

    run = trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "name": "old"}, data=tiny_data, progress=False,
                         callbacks=[StopAt()]).run_dir
    new = ("val_every", "keep_top", "plateau_factor", "plateau_patience", "step_milestones", "step_gamma")
    folder = CheckpointDir(run / "checkpoints")
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    ckpt["config"] = {k: v for k, v in ckpt["config"].items() if k not in new}
    folder.save("last.pt", ckpt, epoch=ckpt["epoch"], global_step=ckpt["global_step"])
    folder.remove("best.pt")
    saved = tomllib.loads((run / "config.toml").read_text())
    (run / "config.toml").write_text(tomli_w.dumps({k: v for k, v in saved.items() if k not in new}))
    result = trainlab.resume(run, data=tiny_data, progress=False)
    assert result.history[-1]["epoch"] == 2
    with pytest.raises(ConfigError, match="val_every"):  # a real change of a fixed key is still refused
        trainlab.resume(run, data=tiny_data, progress=False, overrides={"val_every": 3}, epochs=3)
