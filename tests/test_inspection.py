"""`trainlab inspect`: what a run folder, a trainlab checkpoint, a plain state_dict or a
hand-made checkpoint dict holds, and whether each file's hash verifies."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_dataset, train_tiny
from torch import nn

from trainlab import __version__
from trainlab.analysis.inspection import describe
from trainlab.cli.main import main
from trainlab.store.checkpoint import save_checkpoint
from trainlab.store.schema import load_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One 2-epoch mlp run on the tiny data (as the tiny_data fixture), shared read-only."""
    return train_tiny(tmp_path_factory.mktemp("runs"), tiny_dataset()).run_dir


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    """A private copy of the run, for tests that alter its files."""
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


def norm(t) -> str:
    return f"{float(t.float().norm()):.4g}"


def section(out: str, title: str) -> str:
    """The lines from the one starting with `title` to the next blank line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end])


def row(out: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is `first` (cells hold no spaces)."""
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == [first]]
    assert len(rows) == 1, f"{first!r} rows in:\n{out}"
    return rows[0]


def assert_params_listed(out: str, state: dict) -> None:
    total = sum(v.numel() for v in state.values())
    out = section(out, f"tensors ({len(state)}, {total:,} values)")
    for name, t in state.items():
        assert row(out, name)[1:3] == ["x".join(map(str, t.shape)) or "scalar", f"{t.numel():,}"]


def assert_adam_state_listed(out: str, opt_state: dict, names: list[str]) -> None:
    out = section(out, f"optimizer state ({len(opt_state)} parameters)")
    for pid, st in opt_state.items():
        assert row(out, names[pid])[1:] == [str(int(st["step"])), norm(st["exp_avg"]), norm(st["exp_avg_sq"]), "-"]


def test_inspect_a_run_folder(run_dir, capsys):
    assert main(["inspect", str(run_dir)]) == 0
    out = capsys.readouterr().out
    ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    # the checkpoint table: each file, its epoch and step, the monitored value, verification
    runs = section(out, "run ")
    assert row(runs, "last.pt") == ["last.pt", "2", str(ck["global_step"]), f"{ck['history'][-1]['val_loss']:.4f}",
                                   "val_loss", "ok"]
    assert row(runs, "best.pt")[-1] == "ok"
    assert "newest verified: last.pt" in out
    # the newest verified file, described in full
    assert f"versions  trainlab {__version__}, torch {torch.__version__}" in out
    assert f"progress  epoch 2, global step {ck['global_step']}" in out
    assert "model     mlp" in out and "classes 10" in out
    assert_params_listed(out, ck["model"])
    assert_adam_state_listed(out, ck["optimizer"]["state"], ck["optimizer_param_names"])
    for r in ck["history"]:  # the metric history
        assert row(section(out, "metrics"), str(r["epoch"]))[1:3] == [f"{r['train_loss']:.4f}", f"{r['val_loss']:.4f}"]
    assert f"best      val_loss {ck['best']['value']:.4f} at epoch {ck['best']['epoch']}" in out


def test_inspect_a_trainlab_checkpoint_file(run_dir):
    path = run_dir / "checkpoints" / "last.pt"
    out = describe(path)
    ck = load_checkpoint(path)
    assert "hash      sha256 verified against the manifest" in out
    assert "kind      trainlab checkpoint (format version 1)" in out
    assert f"precision {ck['precision']}; threads 1; world size 1" in out
    assert "recipe    fast: optimizer=adamw" in out
    assert_params_listed(out, ck["model"])
    assert_adam_state_listed(out, ck["optimizer"]["state"], ck["optimizer_param_names"])
    assert "also holds: scheduler, rng, fingerprint" in out


def test_inspect_the_final_model_file(run_dir):
    out = describe(run_dir / "model.pt")
    assert "no manifest beside the file: not verified" in out
    assert "trainlab checkpoint" in out and "optimizer state" not in out
    assert "threads" not in out  # not recorded in model.pt: not shown as if it were "32; None"


def test_inspect_a_plain_state_dict(tmp_path):
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    out = describe(tmp_path / "sd.pt")
    assert "kind      plain state_dict" in out and "no manifest beside the file" in out
    assert_params_listed(out, net.state_dict())
    assert row(out, "1.num_batches_tracked")[1:] == ["scalar", "1", "int64"]


def test_inspect_a_hand_made_checkpoint_dict(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(8, 6)).pow(2).mean().backward()
        opt.step()
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, tmp_path / "ck.pt")
    out = describe(tmp_path / "ck.pt")
    assert "kind      dict with keys: model, optimizer, epoch" in out
    assert "values    epoch 3" in out
    assert "lr=0.01" in out
    assert_params_listed(out, net.state_dict())
    # no names in a bare optimizer state_dict: rows are the parameter indices
    assert_adam_state_listed(out, opt.state_dict()["state"], [str(i) for i in range(4)])


def test_inspect_shows_sgd_momentum(tmp_path):
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.save({"state_dict": net.state_dict(), "optimizer_state_dict": opt.state_dict()}, tmp_path / "s.pt")
    out = describe(tmp_path / "s.pt")
    assert "momentum=0.9" in out
    for pid, st in opt.state_dict()["state"].items():
        assert row(out, str(pid))[1:] == ["-", "-", "-", norm(st["momentum_buffer"])]


def test_inspect_says_unverified_after_a_byte_is_altered(run_copy, caplog):
    last = run_copy / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data: the file still loads
    last.write_bytes(bytes(data))
    out = describe(last)
    assert "hash      UNVERIFIED: its sha256 does not match the manifest (torn or altered)" in out
    assert "trainlab checkpoint" in out  # still shown: inspecting is how you look at a bad file
    caplog.set_level(logging.WARNING, logger="trainlab")
    out = describe(run_copy)
    runs = section(out, "run ")
    assert " ".join(row(runs, "last.pt")).endswith(
        "val_loss UNVERIFIED: its sha256 does not match the manifest (torn or altered)")
    assert row(runs, "best.pt")[-1] == "ok"
    assert "newest verified: best.pt" in out
    assert any("last.pt is unverified" in r.getMessage() for r in caplog.records)


def test_inspect_says_unverified_for_a_file_missing_from_the_manifest(run_copy):
    folder = run_copy / "checkpoints"
    save_checkpoint(folder / "epoch-0007.pt", load_checkpoint(folder / "last.pt"))
    assert "hash      UNVERIFIED: not in the manifest" in describe(folder / "epoch-0007.pt")
    out = describe(run_copy)
    assert row(section(out, "run "), "epoch-0007.pt")[1:] == "? ? - UNVERIFIED: not in the manifest".split()


def test_inspect_a_run_folder_without_checkpoints(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    assert f"(no checkpoints in {tmp_path / 'checkpoints'})" in describe(tmp_path)


def test_inspect_a_run_killed_mid_save_shows_the_old_files_epoch(tmp_path, monkeypatch):
    """Killed after the manifest recorded both hashes, before the rename: last.pt is still
    epoch 1's file and inspect says so, as resume uses it (not the pending epoch 2's entry)."""
    import trainlab.store.manifest as mfmod
    from trainlab.store.checkpoint import make_checkpoint
    from trainlab.store.manifest import CheckpointDir

    def ck(epoch):
        spec = {"name": "mlp", "kwargs": {"hidden": [4]}, "input_shape": [1, 2, 2], "num_classes": 2}
        return make_checkpoint(nn.Linear(3, 2), model_spec=spec, epoch=epoch, global_step=10 * epoch, history=[])

    def killed(tmp, path):
        raise KeyboardInterrupt

    folder = CheckpointDir(tmp_path / "checkpoints")
    folder.save("last.pt", ck(1), epoch=1, global_step=10)
    monkeypatch.setattr(mfmod, "commit", killed)
    with pytest.raises(KeyboardInterrupt):
        folder.save("last.pt", ck(2), epoch=2, global_step=20)
    assert folder.newest_good()[1]["epoch"] == 1  # what resume continues from
    out = describe(tmp_path)
    assert row(section(out, "run "), "last.pt")[1:3] == ["1", "10"], out
    assert row(section(out, "run "), "last.pt")[-1] == "ok"


# ---------------------------------------------------------------- --summary: the model's layers

def test_summary_of_a_run_counts_trainable_parameters_and_lists_each_layer(run_dir, capsys):
    assert main(["inspect", str(run_dir), "--summary"]) == 0
    out = capsys.readouterr().out
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    total = sum(t.numel() for t in state.values())
    assert f"parameters {total:,}: {total:,} trainable, 0 frozen" in out
    for layer in ("1", "3", "5"):  # the mlp's Linear layers (Sequential indices)
        w, b = state[f"{layer}.weight"], state[f"{layer}.bias"]
        cells = row(out, layer)
        assert cells[1] == "Linear" and cells[-2:] == [f"{w.numel() + b.numel():,}", "yes"]
        assert f"weight {'x'.join(map(str, w.shape))}, bias {b.shape[0]}" in " ".join(cells)


def test_summary_of_a_frozen_run_says_what_is_frozen(tmp_path, tiny_data, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="trainlab"):
        result = train_tiny(tmp_path, tiny_data, epochs=1, model="cnn", freeze="body")
    state = load_checkpoint(result.run_dir / "model.pt")["model"]
    head = state["12.weight"].numel() + state["12.bias"].numel()
    total = sum(t.numel() for k, t in state.items() if not k.endswith(("running_mean", "running_var", "tracked")))
    counts = f"{head:,} trainable, {total - head:,} frozen"
    assert any(f"({total:,} parameters: {counts})" in r.getMessage() for r in caplog.records)  # the run line
    assert main(["inspect", str(result.run_dir), "--summary"]) == 0
    out = capsys.readouterr().out
    assert f"parameters {total:,}: {counts}" in out
    assert row(out, "12")[-1] == "yes" and row(out, "0")[-1] == "no" and row(out, "1")[1] == "BatchNorm2d"


def test_layer_table_of_a_users_model_follows_requires_grad():
    from trainlab.analysis.inspection import layer_table

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    out = layer_table(model)
    assert "parameters 50: 14 trainable, 36 frozen" in out
    assert row(out, "0")[1:] == ["Conv2d", "weight", "4x1x3x3,", "bias", "4", "40", "partly"]
    assert row(out, "2")[-1] == "yes" and "ReLU" not in out


def test_summary_of_a_user_model_without_allow_import_reads_the_tensors(run_dir, tmp_path, capsys):
    """A file naming module:function is never imported by --summary: the table is the tensors'."""
    ck = load_checkpoint(run_dir / "model.pt")
    ck["model_spec"] = {**ck["model_spec"], "name": "evil_module:make"}
    save_checkpoint(tmp_path / "user.pt", ck)
    assert main(["inspect", str(tmp_path / "user.pt"), "--summary"]) == 0
    out = capsys.readouterr().out
    assert "evil_module:make (not built:" in out and "evil_module" not in sys.modules
    total = sum(t.numel() for t in ck["model"].values())
    assert f"parameters {total:,}: {total:,} trainable, 0 frozen (tensors, buffers included)" in out
    assert row(out, "5")[1:] == ["weight", "10x128,", "bias", "10", "1,290", "yes"]


def test_summary_of_a_plain_state_dict_and_of_garbage(tmp_path, capsys):
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "sd.pt")
    assert main(["inspect", str(tmp_path / "sd.pt"), "--summary"]) == 0
    assert "parameters 6: 6 trainable" in capsys.readouterr().out
    torch.save([1, 2], tmp_path / "list.pt")
    assert main(["inspect", str(tmp_path / "list.pt"), "--summary"]) == 1
    err = capsys.readouterr().err
    assert "nothing to summarize" in err and "Traceback" not in err
