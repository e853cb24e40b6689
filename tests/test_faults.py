"""The write path's fault-injection seam (trainlab.store.faults): a save announces each phase,
a fault injected there interrupts it like a crash, and no production module reads test hooks
from the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from trainlab.store import faults
from trainlab.store.checkpoint import make_checkpoint
from trainlab.store.manifest import CheckpointDir

SRC = Path(__file__).resolve().parents[1] / "src" / "trainlab"
SPEC = {"name": "mlp", "kwargs": {"hidden": [4]}, "input_shape": [1, 2, 2], "num_classes": 2}


def ckpt(epoch: int) -> dict:
    return make_checkpoint(nn.Linear(3, 2), model_spec=json.loads(json.dumps(SPEC)), epoch=epoch,
                           global_step=10 * epoch)


class Recorder:
    def __init__(self, crash_at: str | None = None):
        self.seen, self.crash_at = [], crash_at

    def at(self, phase, name, step=None):
        self.seen.append((phase, name, step))
        if phase == self.crash_at and name == "last.pt":
            raise Crash(phase)


class Crash(BaseException):  # like a kill: not an Exception a handler could swallow
    pass


def test_a_checkpoint_save_announces_each_phase_in_order(tmp_path, monkeypatch):
    folder = CheckpointDir(tmp_path)
    monkeypatch.setattr(faults, "FAULTS", Recorder())
    folder.save("last.pt", ckpt(1), epoch=1, global_step=10)
    assert faults.FAULTS.seen == [("tmp-partial", "last.pt", None), ("tmp-partial", "manifest.json", None),
                                  ("pending", "last.pt", 10), ("renamed", "last.pt", 10),
                                  ("tmp-partial", "manifest.json", None), ("manifest-done", "last.pt", 10)]


@pytest.mark.parametrize("phase, kept_epoch", [("tmp-partial", 1), ("pending", 1), ("renamed", 2),
                                               ("manifest-done", 2)])
def test_a_crash_injected_at_any_phase_leaves_a_checkpoint_that_verifies(tmp_path, monkeypatch, phase, kept_epoch):
    folder = CheckpointDir(tmp_path)
    folder.save("last.pt", ckpt(1), epoch=1, global_step=10)
    monkeypatch.setattr(faults, "FAULTS", Recorder(crash_at=phase))
    with pytest.raises(Crash):
        folder.save("last.pt", ckpt(2), epoch=2, global_step=20)
    monkeypatch.setattr(faults, "FAULTS", faults.NoFaults())
    assert folder.verify("last.pt") is None
    assert folder.newest_good()[1]["epoch"] == kept_epoch
    assert not list(tmp_path.glob(".last.pt.tmp-*"))  # the interrupted temporary file removed


def test_no_module_reads_test_hooks_from_the_environment():
    readers = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "TRAINLAB_TEST" in p.read_text()]
    assert not readers, readers
