"""--keep-top K (training.callbacks.CheckpointWriter, store.manifest.CheckpointDir.prune_top): the K
best checkpoints by the monitored metric, kept across a crash mid-save and a resume, pruned under
the manifest's crash-safety rules."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_RUN

import trainlab
from trainlab.store import faults
from trainlab.store.manifest import CheckpointDir
from trainlab.store.schema import load_checkpoint

# the scripted validation loss of epochs 1..6: the two best are epochs 4 and 5
SCRIPT = [5.0, 3.0, 4.0, 1.0, 2.0, 6.0]


class Scripted(trainlab.Callback):
    """Writes the scripted val_loss into each epoch's row before the monitor reads it (order 5)."""
    order = 5

    def on_epoch_end(self, run, row):
        row["val_loss"] = SCRIPT[row["epoch"] - 1]


class StopAt(trainlab.Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, run):
        return "test" if run.state.global_step == self.step else None


class CrashAtTop:
    """Like a kill inside the save of `name`: after its rename, before the manifest drops the old hash."""

    def __init__(self, name):
        self.name = name

    def at(self, phase, name, step=None):
        if phase == "renamed" and name == self.name:
            raise KeyboardInterrupt("crash")


def cfg(tmp_path, name, **kw):
    # 600 - 100 samples at batch 32: 16 steps an epoch
    return {**TINY_RUN, "epochs": 6, "runs_dir": str(tmp_path), "name": name, "keep_top": 2, **kw}


def top_files(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").glob("top-*.pt"))


def ckpt(epoch):
    return {"model": {"w": torch.full((2,), float(epoch))}, "epoch": epoch, "global_step": epoch * 10}


def test_exactly_the_k_best_remain_across_a_stop_a_crash_mid_save_and_a_resume(tmp_path, tiny_data, monkeypatch):
    full = trainlab.train(cfg(tmp_path, "full"), data=tiny_data, progress=False, callbacks=[Scripted()])
    assert top_files(full.run_dir) == ["top-epoch-0004.pt", "top-epoch-0005.pt"]
    # cut mid-epoch 3, resumed; then a crash inside the save of epoch 5's top file (K+1 files on
    # disk), resumed again: the same K files, the same weights
    trainlab.train(cfg(tmp_path, "cut"), data=tiny_data, progress=False, callbacks=[Scripted(), StopAt(40)])
    cut = tmp_path / "cut"
    assert top_files(cut) == ["top-epoch-0001.pt", "top-epoch-0002.pt"]
    monkeypatch.setattr(faults, "FAULTS", CrashAtTop("top-epoch-0005.pt"))
    with pytest.raises(KeyboardInterrupt):
        trainlab.resume(cut, data=tiny_data, progress=False, callbacks=[Scripted()])
    monkeypatch.setattr(faults, "FAULTS", faults.NoFaults())
    assert top_files(cut) == ["top-epoch-0002.pt", "top-epoch-0004.pt", "top-epoch-0005.pt"]  # not yet pruned
    trainlab.resume(cut, data=tiny_data, progress=False, callbacks=[Scripted()])
    assert top_files(cut) == top_files(full.run_dir)
    manifest = CheckpointDir(cut / "checkpoints").manifest()["files"]
    assert sorted(n for n in manifest if n.startswith("top-")) == top_files(full.run_dir)
    for name in top_files(cut):
        a = load_checkpoint(full.run_dir / "checkpoints" / name)["model"]
        b = load_checkpoint(cut / "checkpoints" / name)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_max_mode_keeps_the_highest(tmp_path, tiny_data):
    class Acc(trainlab.Callback):
        order = 5

        def on_epoch_end(self, run, row):
            row["val_acc"] = SCRIPT[row["epoch"] - 1]

    run = trainlab.train(cfg(tmp_path, "acc", monitor="val_acc", epochs=4, keep_top=1), data=tiny_data,
                         progress=False, callbacks=[Acc()])
    assert top_files(run.run_dir) == ["top-epoch-0001.pt"]


def test_prune_keeps_the_k_best_a_tie_keeps_the_earlier_and_unranked_files_stay(tmp_path):
    folder = CheckpointDir(tmp_path)
    for epoch, value in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 2.0)]:
        folder.save(f"top-epoch-{epoch:04d}.pt", ckpt(epoch), epoch=epoch, global_step=epoch * 10,
                    metric="val_loss", value=value)
    folder.save("top-epoch-0009.pt", ckpt(9), epoch=9, global_step=90)  # a rebuilt entry: no value
    assert not folder.enters_top(2, "val_loss", "min", 2.0)  # a tie with the K-th does not enter
    assert folder.enters_top(2, "val_loss", "min", 0.5)
    folder.prune_top(2, "val_loss", "min")
    assert sorted(folder.manifest()["files"]) == ["top-epoch-0002.pt", "top-epoch-0003.pt", "top-epoch-0009.pt"]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == sorted(folder.manifest()["files"])


def test_nothing_is_pruned_while_the_new_file_does_not_verify(tmp_path):
    folder = CheckpointDir(tmp_path)
    for epoch, value in [(1, 3.0), (2, 2.0), (3, 1.0)]:
        folder.save(f"top-epoch-{epoch:04d}.pt", ckpt(epoch), epoch=epoch, global_step=epoch * 10,
                    metric="val_loss", value=value)
    (tmp_path / "top-epoch-0003.pt").write_bytes(b"torn")
    folder.prune_top(2, "val_loss", "min", new="top-epoch-0003.pt")
    assert len(list(tmp_path.glob("top-*.pt"))) == 3


@pytest.mark.parametrize("value", [-1, 10001, True])
def test_keep_top_out_of_range_is_one_sentence(value):
    from trainlab.config import resolve
    from trainlab.errors import ConfigError

    with pytest.raises(ConfigError, match="keep_top"):
        resolve({"keep_top": value})
