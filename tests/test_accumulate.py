"""Gradient accumulation (--accumulate N): N micro-batches to an optimizer step, the same
weights as the large batch, one all-reduce and one scaler step per group, schedules counting
optimizer steps, and a stop anywhere in a group resuming bitwise."""

from __future__ import annotations

import contextlib
import json
import os
import signal

import pytest
import torch
from conftest import TINY_RUN, assert_resume_bitwise, tiny_dataset
from torch import nn

import trainlab
from trainlab.config import resolve
from trainlab.data import DeviceLoader
from trainlab.errors import ConfigError
from trainlab.store.schema import load_checkpoint
from trainlab.training.loop import StepParts, fit
from trainlab.training.signals import Interrupted


def _net() -> nn.Module:
    torch.manual_seed(0)  # no dropout, no BatchNorm: a batch's gradient is the mean of its samples'
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def data_1088():
    return tiny_dataset(n_train=4 * 256 + 64, n_test=50)


def _train(data, batch_size: int, accumulate: int, clip: float = 0.0, epochs: int = 2) -> dict:
    n = 4 * 256 + 64  # 17 micro-batches of 64: four groups of 4 and a short group of 1
    loader = DeviceLoader(data.train_x[:n], data.train_y[:n], batch_size, mean=data.mean, std=data.std,
                          shuffle=True, seed=3)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = fit(model, opt, loader, epochs=epochs, progress=False,
                parts=StepParts(scheduler=sched, grad_clip=clip, accumulate=accumulate))
    assert state.global_step == sched.last_epoch == epochs * 5  # optimizer steps, the short group too
    return model.state_dict()


@pytest.mark.parametrize("clip", [0.0, 0.05], ids=["plain", "clipped"])
def test_four_micro_batches_of_64_give_the_weights_of_batch_256(data_1088, clip):
    """The same samples in the same order: 4 x 64 accumulated is one step of 256, the epoch's
    short group (64 samples) one step of the large run's short batch. Clipping acts on the
    accumulated gradient (clip 0.05 binds: per micro-batch it would differ)."""
    big = _train(data_1088, 256, 1, clip)
    small = _train(data_1088, 64, 4, clip)
    for k in big:
        torch.testing.assert_close(small[k], big[k], rtol=1e-5, atol=1e-6)
    # and accumulation is not a no-op: one step per micro-batch ends elsewhere
    plain = _train_plain_64(data_1088, clip)
    assert any(not torch.allclose(plain[k], big[k], atol=1e-4) for k in big)


def _train_plain_64(data, clip):
    n = 4 * 256 + 64
    loader = DeviceLoader(data.train_x[:n], data.train_y[:n], 64, mean=data.mean, std=data.std,
                          shuffle=True, seed=3)
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fit(model, opt, loader, epochs=2, progress=False, parts=StepParts(grad_clip=clip))
    return model.state_dict()


class _SyncSpy(nn.Module):
    """A DDP stand-in: records, for each forward, whether it ran inside no_sync()."""

    def __init__(self):
        super().__init__()
        self.net, self.inside, self.calls = _net(), False, []

    @contextlib.contextmanager
    def no_sync(self):
        self.inside = True
        try:
            yield
        finally:
            self.inside = False

    def forward(self, x):
        self.calls.append(self.inside)
        return self.net(x)


class _ScalerSpy(torch.amp.GradScaler):
    def __init__(self):
        super().__init__("cpu", enabled=False)
        self.steps = self.updates = 0

    def step(self, optimizer, *args, **kwargs):
        self.steps += 1
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.updates += 1
        return super().update(new_scale)


def test_no_all_reduce_on_the_first_n_minus_1_micro_batches_and_one_scaler_step_per_group(tiny_data):
    """7 micro-batches, N = 3: groups of 3, 3, 1. Only each group's last forward/backward
    syncs (DDP's no_sync on the others); the scaler steps and updates once per group."""
    loader = DeviceLoader(tiny_data.train_x[:7 * 32], tiny_data.train_y[:7 * 32], 32,
                          mean=tiny_data.mean, std=tiny_data.std, shuffle=True)
    model, scaler = _SyncSpy(), _ScalerSpy()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    state = fit(model, opt, loader, epochs=1, progress=False, parts=StepParts(scaler=scaler, accumulate=3))
    assert model.calls == [True, True, False, True, True, False, False]
    assert scaler.steps == scaler.updates == state.global_step == 3


def test_a_run_counts_optimizer_steps_and_plans_its_schedule_in_them(tiny_data, tmp_path):
    """500 training samples at batch 32 are 16 micro-batches: with N = 3, 6 optimizer steps an
    epoch (the last group holds one micro-batch); the schedule is planned in them, and config,
    checkpoint and metrics say so."""
    r = trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "accumulate": 3, "schedule": "onecycle",
                        "optimizer": "sgd"}, data=tiny_data, progress=False)
    ck = load_checkpoint(r.run_dir / "checkpoints" / "last.pt")
    assert ck["schedule"]["steps_per_epoch"] == 6
    assert ck["global_step"] == ck["scheduler"]["last_epoch"] == 12
    assert ck["config"]["accumulate"] == 3
    assert [row["global_step"] for row in r.history] == [6, 12]
    assert "accumulate = 3" in (r.run_dir / "config.toml").read_text()
    # one-cycle reaches its final rate (1% of the peak) after exactly the planned steps; planned in
    # micro-batches (32) it would still be at 0.28 of the peak
    assert r.history[-1]["lr"] == pytest.approx(0.01 * ck["config"]["lr"])


@pytest.mark.parametrize("step", [4, 11], ids=["mid-epoch-1", "before-the-short-group"])
def test_a_stop_between_groups_resumes_bitwise(tiny_data, tmp_path, step):
    """N = 3, 6 steps an epoch: stopped after optimizer step 4 (12 micro-batches in) and after
    step 11 (epoch 2, one micro-batch -- the short group -- left), then resumed."""
    cfg = {**TINY_RUN, "accumulate": 3, "optimizer": "sgd", "schedule": "onecycle", "ema": 0.9}
    assert_resume_bitwise(cfg, tmp_path, step, {"data": tiny_data}, {"data": tiny_data})
    ck = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert ck["global_step"] == 12 and ck["step"] == 0


def _armed_net(at_forward: int | None):
    """_net() that sends this process SIGTERM during its `at_forward`-th training forward."""
    model = _net()
    seen = [0]

    def hook(module, args):
        if module.training:
            seen[0] += 1
            if seen[0] == at_forward:
                os.kill(os.getpid(), signal.SIGTERM)

    model.register_forward_pre_hook(hook)
    return model


def test_sigterm_inside_a_group_saves_at_its_end_and_resumes_bitwise(tiny_data, tmp_path):
    """SIGTERM during the 2nd micro-batch of epoch 1's 3rd group (forward 8, N = 3): the group
    finishes (the stop waits for the optimizer step: no gradient is pending in the saved
    state), last.pt is at 3 steps / 9 micro-batches, and the resumed run ends bitwise equal."""
    cfg = {**TINY_RUN, "runs_dir": str(tmp_path), "accumulate": 3, "optimizer": "sgd", "schedule": "onecycle"}
    full = trainlab.train({**cfg, "name": "full"}, data=tiny_data, model=_armed_net(None), progress=False)
    with pytest.raises(Interrupted, match="SIGTERM: stopped at epoch 1"):
        trainlab.train({**cfg, "name": "cut"}, data=tiny_data, model=_armed_net(8), progress=False)
    ck = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert (ck["global_step"], ck["step"]) == (3, 9)
    trainlab.resume(tmp_path / "cut", data=tiny_data, model=_armed_net(None), progress=False)
    a = load_checkpoint(full.run_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows if "epoch" in r and "train_loss" in r] == [6, 12]


@pytest.mark.parametrize("value", [0, -1, 4097, 1.5, True])
def test_accumulate_below_1_or_not_a_count_is_refused_in_one_sentence(value):
    words = r"^(command line: )?accumulate = \S+ (is invalid: must be at least 1|has the wrong type)"
    with pytest.raises(ConfigError, match=words):
        resolve({"accumulate": value})


def test_the_cli_refuses_accumulate_0_with_exit_2(cli):
    r = cli("train", "--accumulate", "0", "--epochs", "1")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "accumulate = 0 is invalid: must be at least 1" in lines[0], r.stderr
