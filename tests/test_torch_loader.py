"""A torch DataLoader given to fit(): trained as trainlab's own loader is (it was a raw
AttributeError), the shuffle order seeded by (seed, epoch), a stopped epoch continued exactly."""

import copy

import pytest
import torch
from conftest import make_images
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainlab.errors import DataError
from trainlab.training.callbacks import Callback
from trainlab.training.loop import StepParts, fit
from trainlab.training.run import FitState


def _data(n=96):
    x, y = make_images(n, seed=3)
    return TensorDataset(torch.as_tensor(x).float() / 255, torch.as_tensor(y).long())


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, run):
        if run.state.global_step == self.step:
            return "test"


def _fit(model, loader, state=None, callbacks=(), val=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if state is not None and getattr(state, "opt", None) is not None:
        opt.load_state_dict(state.opt)
    out = fit(model, opt, loader, epochs=2, val_loader=val, parts=StepParts(seed=7), state=state,
              callbacks=list(callbacks), progress=False)
    out.opt = opt.state_dict()
    return out


def test_fit_trains_from_a_torch_dataloader_with_validation():
    model = _model()
    state = _fit(model, DataLoader(_data(), batch_size=16, shuffle=True), val=DataLoader(_data(32), batch_size=8))
    assert [r["epoch"] for r in state.history] == [1, 2]
    assert 0 <= state.history[-1]["val_acc"] <= 1 and state.global_step == 12


def test_the_shuffle_order_is_seeded_and_a_stopped_epoch_continues_exactly():
    full = _model()
    _fit(full, DataLoader(_data(), batch_size=16, shuffle=True))
    again = _model()  # the same seed, another loader object: the same order, the same weights
    _fit(again, DataLoader(_data(), batch_size=16, shuffle=True))
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), again.state_dict().values()))

    cut = _model()
    state = _fit(cut, DataLoader(_data(), batch_size=16, shuffle=True), callbacks=[StopAt(9)])
    assert state.global_step == 9 and state.epoch == 1 and state.step == 3
    torch.manual_seed(999)  # the global generator moved on: the order must not depend on it
    state.stopped = None
    _fit(cut, DataLoader(_data(), batch_size=16, shuffle=True), state=state)
    assert state.global_step == 12
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), cut.state_dict().values()))


def test_a_loader_that_gives_no_labels_is_one_sentence():
    x = _data().tensors[0]
    with pytest.raises(DataError, match=r"not \(images, labels\)"):
        _fit(_model(), DataLoader(x, batch_size=16))


def test_train_given_a_dataloader_says_what_to_do(tmp_path):
    import trainlab
    from trainlab.errors import ConfigError

    with pytest.raises(ConfigError, match="takes a trainlab Dataset, not a torch DataLoader.*trainlab.fit"):
        trainlab.train({"runs_dir": str(tmp_path)}, data=DataLoader(_data(), batch_size=16))


class _Items(torch.utils.data.Dataset):
    def __init__(self, item, n=32):
        self.item, self.n = item, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.item(i)


class _NoLength(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield from ((torch.zeros(1, 28, 28), 0) for _ in range(32))


@pytest.mark.parametrize("dataset,phrase", [
    (_NoLength(), "has no length"),  # was TypeError: object of type ... has no len()
    (_Items(lambda i: (torch.zeros(1, 28, 28), 0), n=0), "holds no batches"),  # was trained on nothing, loss NaN
    (_Items(lambda i: ([0.0] * 784, 0)), "images are a list"),  # was AttributeError: 'list' ... 'to'
    (_Items(lambda i: ("a.png", 0)), "images are a tuple"),
    (_Items(lambda i: (torch.zeros(1, 28, 28), 0.5)), "labels are a torch.float64"),  # was a RuntimeError
    (_Items(lambda i: (torch.zeros(1, 28, 28), -1)), "negative label -1"),
])
def test_a_dataloader_giving_something_else_is_one_sentence(dataset, phrase):
    model = _model()
    with pytest.raises(DataError, match=phrase):
        fit(model, torch.optim.SGD(model.parameters(), 0.1), DataLoader(dataset, batch_size=8), epochs=1,
            progress=False)
