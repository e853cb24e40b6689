"""The training loop (trainlab.training.loop.fit): it learns, its history rows, a non-finite loss, devices."""

import math

import pytest
import torch
from torch import nn

from trainlab import devices, inference, models
from trainlab.data import DeviceLoader
from trainlab.devices import DeviceMismatch, pick_device
from trainlab.errors import TrainlabError
from trainlab.recipes import get_recipe
from trainlab.training import optim
from trainlab.training.callbacks import Callback
from trainlab.training.loop import NonFiniteLoss, fit

HISTORY_KEYS = {"epoch", "global_step", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                "test_loss", "test_acc", "train_seconds", "seconds"}


def loaders(data, batch_size=64):
    common = dict(mean=data.mean, std=data.std)
    train = DeviceLoader(data.train_x[:500], data.train_y[:500], batch_size, shuffle=True, seed=0, **common)
    val = DeviceLoader(data.train_x[500:], data.train_y[500:], 256, **common)
    test = DeviceLoader(data.test_x, data.test_y, 256, **common)
    return train, val, test


def test_fit_learns_and_records_history(tiny_data):
    torch.manual_seed(0)
    train, val, test = loaders(tiny_data)
    model = models.build("mlp", tiny_data.input_shape, tiny_data.num_classes)
    recipe = get_recipe("textbook", epochs=3)
    opt = optim.build_optimizer(model, recipe)
    seen = []

    class Seen(Callback):
        def on_epoch_end(self, run, row):
            seen.append(run.state.epoch)

    state = fit(model, opt, train, epochs=3, val_loader=val, test_loader=test, progress=False,
                callbacks=[Seen()])
    assert seen == [1, 2, 3] and state.epoch == 3 and state.global_step == 3 * len(train)
    assert len(state.history) == 3
    for i, row in enumerate(state.history, 1):
        assert HISTORY_KEYS <= set(row)
        assert row["epoch"] == i and row["global_step"] == i * len(train)
        assert row["lr"] == pytest.approx(1e-3)
        assert all(math.isfinite(row[k]) for k in HISTORY_KEYS)
    assert all(row["test_note"] == "not for selection" for row in state.history)  # a test_loader given: labelled
    last = state.history[-1]
    assert last["test_acc"] > 0.8 and last["val_acc"] > 0.8  # chance is 0.1
    assert last["train_loss"] < state.history[0]["train_loss"]
    assert model.training  # evaluation restored train mode


def test_fit_continues_a_state(tiny_data):
    train, _, _ = loaders(tiny_data)
    model = models.build("mlp", tiny_data.input_shape, 10)
    opt = optim.build_optimizer(model, get_recipe("textbook"))
    state = fit(model, opt, train, epochs=1, progress=False)
    state = fit(model, opt, train, epochs=2, state=state, progress=False)
    assert [r["epoch"] for r in state.history] == [1, 2]
    assert state.global_step == 2 * len(train)


class NaNAfter(nn.Module):
    """A linear model whose output turns NaN from its `n`-th training forward on."""

    def __init__(self, n):
        super().__init__()
        self.n, self.calls = n, 0
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls > self.n:
                out = out * float("nan")
        return out


def test_non_finite_loss_names_epoch_and_step(tiny_data):
    train, _, _ = loaders(tiny_data, batch_size=100)  # 5 steps per epoch
    model = NaNAfter(7)  # NaN from the 8th step on: epoch 2, its step 3 (1-based, as in history)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLoss) as e:
        fit(model, opt, train, epochs=3, progress=False)
    assert (e.value.epoch, e.value.step) == (2, 3)
    assert math.isnan(e.value.value)
    assert "epoch 2, step 3" in str(e.value) and "lower the learning rate" in str(e.value)
    assert isinstance(e.value, TrainlabError)


def test_huge_learning_rate_is_caught(tiny_data):
    torch.manual_seed(0)
    train, _, _ = loaders(tiny_data)
    model = models.build("mlp", tiny_data.input_shape, 10)
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    with pytest.raises(NonFiniteLoss, match="the training loss became (nan|inf)"):
        fit(model, opt, train, epochs=3, progress=False)


def test_model_on_another_device_is_refused_naming_both(tiny_data):
    train, _, _ = loaders(tiny_data)
    model = models.build("mlp", tiny_data.input_shape, 10).to("meta")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(DeviceMismatch) as e:
        fit(model, opt, train, epochs=1, progress=False)
    assert "model is on meta" in str(e.value) and "data is on cpu" in str(e.value)
    assert "bring the data to the model" in str(e.value) and "device='meta'" in str(e.value)
    with pytest.raises(DeviceMismatch, match="meta"):
        inference.evaluate(model, train)


def test_optimizer_state_on_another_device_is_refused():
    model = nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    opt.state[model.weight] = {"exp_avg": torch.zeros(2, 2, device="meta")}
    with pytest.raises(DeviceMismatch, match="optimizer state is on meta but the model is on cpu"):
        devices.check_same_device(model, torch.device("cpu"), opt)


def test_pick_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
    for dev in ("cuda", "cuda:1"):
        with pytest.raises(TrainlabError) as e:
            pick_device(dev)
        assert "no usable CUDA GPU" in str(e.value) and "--device cpu" in str(e.value)
    with pytest.raises(TrainlabError, match="'mps' was asked for but is not available"):
        pick_device("mps")


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizers_skip_decay_on_biases(optimizer):
    model = models.build("mlp-reg", (1, 28, 28), 10)
    opt = optim.build_optimizer(model, get_recipe("textbook", optimizer=optimizer, weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
