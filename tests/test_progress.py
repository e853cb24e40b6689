"""The progress bar (training.loop._progress): it shows the epoch's running train loss, read
from the device tensor only when the bar is redrawn, never once per step."""

from __future__ import annotations

import torch

from trainlab.training import loop


def test_the_bar_shows_the_running_loss_read_only_at_its_redraws(capsys, monkeypatch):
    reads = []
    real = torch.Tensor.__float__
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: reads.append(1) or real(t))
    monkeypatch.setattr(loop, "BAR_REFRESH", 3600.0)  # no redraw on its own during the test
    bar = loop._progress(1000, "epoch 1/1", True)
    bar.losses = torch.arange(1000, dtype=torch.float32)  # what train_epoch hands it
    for _ in range(999):
        bar.update(1)
    assert reads == []  # 999 steps, no redraw due: nothing read
    bar.refresh()
    assert len(reads) == 1
    assert "loss 499.0000" in capsys.readouterr().err  # the mean of the 999 losses so far
    bar.close()


def test_a_bar_before_any_step_shows_no_loss(capsys):
    bar = loop._progress(10, "epoch 1/1", True)
    bar.losses = torch.zeros(10)
    bar.refresh()
    assert "loss" not in capsys.readouterr().err
    bar.close()
