"""Checkpoint files: weights round trips, refusals (pickled modules, malicious pickles, other
architectures, torn / foreign / newer files), the checkpoint folder (manifest, verification,
fallback, pruning), a full disk, and files tagged for a CUDA device on a CPU-only machine.

Resume exactness, kill -9 trials, interrupts and early stopping live in test_resume.py."""

from __future__ import annotations

import errno
import importlib
import logging
import os
import pickle
import shutil
import sys
from collections import OrderedDict, namedtuple
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import run_cli, train_tiny
from torch import nn

import trainlab.store.atomic as atomic
from trainlab.cli.main import main
from trainlab.config import resolve
from trainlab.errors import StoreError
from trainlab.store.checkpoint import load_weights, make_checkpoint, save_checkpoint, save_weights, sha256_file
from trainlab.store.manifest import CheckpointDir
from trainlab.store.safeload import CheckpointError, safe_load
from trainlab.store.schema import load_checkpoint

SPEC = {"name": "test", "kwargs": {}, "input_shape": [1, 4, 4], "num_classes": 3}


# ---------------------------------------------------------------- helpers

def small_net() -> nn.Module:
    """Conv + BatchNorm (buffers, an int64 counter) + Linear: every kind of state_dict entry."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3))
    net.train()
    net(torch.randn(5, 1, 4, 4))  # moves BatchNorm's running statistics off their defaults
    return net


def assert_state_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def tiny_ckpt(epoch: int = 1, value: float = 0.0) -> dict:
    return make_checkpoint(nn.Linear(3, 2), model_spec=SPEC, epoch=epoch, global_step=10 * epoch,
                           history=[{"epoch": epoch, "val_loss": value}])


def flip_byte(path: Path, where: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if where is None else where] ^= 0xFF
    path.write_bytes(bytes(data))


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp-*"))


@contextmanager
def cuda_location_tags():
    """torch.save tags every storage `cuda:0`, as on a GPU machine, without a GPU."""
    saved = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        yield
    finally:
        torch.serialization.location_tag = saved


# ---------------------------------------------------------------- weights

def test_save_weights_round_trip_every_tensor_equal(tmp_path):
    net = small_net()
    path = save_weights(net, tmp_path / "w.pt")
    raw = torch.load(path, weights_only=True)  # a plain state_dict any PyTorch reads
    assert_state_equal(raw, net.state_dict())
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3))
    assert load_weights(fresh, path) is fresh
    assert_state_equal(fresh.state_dict(), net.state_dict())
    assert not temp_files(tmp_path)


def test_load_weights_strips_compile_and_ddp_prefixes(tmp_path):
    net = small_net()
    prefixes = ["_orig_mod.", "module.", "module._orig_mod.", "_orig_mod.module."]
    wrapped = OrderedDict((prefixes[i % len(prefixes)] + k, v) for i, (k, v) in enumerate(net.state_dict().items()))
    torch.save(wrapped, tmp_path / "wrapped.pt")
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3))
    load_weights(fresh, tmp_path / "wrapped.pt")
    assert_state_equal(fresh.state_dict(), net.state_dict())


def test_load_weights_takes_the_model_out_of_a_trainlab_checkpoint(tmp_path):
    net = small_net()
    save_checkpoint(tmp_path / "c.pt", make_checkpoint(net, model_spec=SPEC, epoch=1))
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3))
    load_weights(fresh, tmp_path / "c.pt", map_location="cpu")
    assert_state_equal(fresh.state_dict(), net.state_dict())


def test_load_weights_from_another_architecture_names_every_difference(tmp_path):
    other = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3), nn.ReLU(), nn.Linear(3, 2))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.BatchNorm1d(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_weights(model, tmp_path / "other.pt")
    msg = str(e.value)
    assert "does not fit this model" in msg and "\n" not in msg
    assert "missing keys: 3.weight, 3.bias, 3.running_mean, 3.running_var, 3.num_batches_tracked" in msg
    assert "unexpected keys: 4.weight, 4.bias" in msg
    for mismatch in ("0.weight: file (16, 4) vs model (8, 4)", "0.bias: file (16,) vs model (8,)",
                     "2.weight: file (3, 16) vs model (3, 8)"):
        assert mismatch in msg
    assert "2.bias:" not in msg  # same shape: not a mismatch
    assert_state_equal(model.state_dict(), before)  # nothing was half-loaded


# ---------------------------------------------------------------- refusals

def make_marker_module(tmp_path: Path, name: str, marker: Path) -> Path:
    """A module whose import writes `marker`, defining a small nn.Module class."""
    folder = tmp_path / "helpers"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(
        "import pathlib\nimport torch\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "class MarkerNet(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(4, 2)\n")
    return folder


def save_pickled_module(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """torch.save(model) of a class from a marker module; returns (file, marker, module folder).
    The module stays importable (on sys.path) but is dropped from sys.modules, so anything that
    unpickled the file would import it again and write the marker."""
    marker = tmp_path / f"{name}.imported"
    folder = make_marker_module(tmp_path, name, marker)
    sys.path.insert(0, str(folder))
    try:
        importlib.invalidate_caches()
        model = importlib.import_module(name).MarkerNet()
        torch.save(model, tmp_path / "module.pt")
    finally:
        sys.modules.pop(name, None)
    assert marker.exists()
    marker.unlink()
    return tmp_path / "module.pt", marker, folder


def test_pickled_module_is_refused_without_importing_its_class(tmp_path):
    name = "marker_module_inproc"
    path, marker, folder = save_pickled_module(tmp_path, name)
    try:
        for load in (lambda: safe_load(path), lambda: load_checkpoint(path, map_location="cpu"),
                     lambda: load_weights(nn.Linear(4, 2), path)):
            with pytest.raises(CheckpointError) as e:
                load()
            msg = str(e.value)
            assert "pickled model object" in msg and "torch.save(model)" in msg
            assert "state_dict" in msg and f"{name}.MarkerNet" in msg
            assert not marker.exists() and name not in sys.modules
        # the premise: unpickling it for real does import the module and write the marker
        torch.load(path, weights_only=False)
        assert marker.exists()
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)


def test_pickled_module_is_refused_by_the_cli_without_a_traceback(tmp_path):
    name = "marker_module_cli"
    path, marker, folder = save_pickled_module(tmp_path, name)
    sys.path.remove(str(folder))
    # cwd = the module's folder: `python -m` puts it on sys.path, so an unpickle could import it
    proc = run_cli("inspect", str(path), cwd=folder)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "pickled model object" in proc.stderr and "state_dict" in proc.stderr
    assert proc.stderr.count("\n") == 1  # one sentence on one line
    assert not marker.exists()


class Payload:
    """Unpickling this runs `fn(*args)`: the classic malicious pickle."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payload(kind: str, marker: Path) -> Payload:
    if kind == "os.system":
        return Payload(os.system, (f"touch {marker}",))
    return Payload(exec, (f"open({str(marker)!r}, 'w').write('pwned')",))


def write_malicious(path: Path, fmt: str, obj) -> None:
    if fmt == "torch.save":
        torch.save({"model": {"w": torch.ones(2)}, "x": obj}, path)  # torch's zip format
    else:
        path.write_bytes(pickle.dumps({"x": obj}, protocol=int(fmt[-1])))  # a raw pickle


@pytest.mark.parametrize("fmt", ["torch.save", "pickle-p2", "pickle-p5"])
@pytest.mark.parametrize("kind", ["os.system", "exec"])
def test_malicious_pickle_is_refused_and_never_run(tmp_path, fmt, kind):
    if kind == "os.system" and os.name != "posix":
        pytest.skip("the os.system payload uses touch")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    write_malicious(path, fmt, payload(kind, marker))
    for load in (lambda: safe_load(path), lambda: load_checkpoint(path),
                 lambda: load_weights(nn.Linear(2, 2), path)):
        with pytest.raises(CheckpointError) as e:
            load()
        msg = str(e.value)
        assert "refuse" in msg and "nothing in it was run" in msg and "\n" not in msg
        assert ("posix.system" if kind == "os.system" else ".exec") in msg  # builtins / __builtin__
    assert not marker.exists()


def test_the_malicious_payload_is_live(tmp_path):
    """The premise of the test above: unpickling the file for real does write the marker."""
    marker = tmp_path / "pwned"
    write_malicious(tmp_path / "evil.pkl", "pickle-p5", payload("exec", marker))
    pickle.loads((tmp_path / "evil.pkl").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("fmt,command", [("torch.save", "predict"), ("pickle-p5", "inspect")])
def test_malicious_pickle_is_refused_by_the_cli(tmp_path, fmt, command):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    write_malicious(path, fmt, payload("exec", marker))
    proc = run_cli(command, str(path), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "refuse" in proc.stderr
    assert proc.stderr.startswith("trainlab: error: ") and proc.stderr.count("\n") == 1
    assert not marker.exists()


def _plain_state_dict(path, real):
    torch.save(nn.Linear(3, 2).state_dict(), path)


def _newer_version(path, real):
    torch.save({**tiny_ckpt(), "format_version": 2}, path)


def _string_version(path, real):
    torch.save({**tiny_ckpt(), "format_version": "1"}, path)


def _random_bytes(path, real):
    import numpy as np

    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _text_file(path, real):
    path.write_text("epoch,loss\n1,0.5\n" * 50)


def _torn(path, real):
    data = real.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _torn_early(path, real):
    data = real.read_bytes()
    path.write_bytes(data[: len(data) // 10])


def _empty(path, real):
    path.write_bytes(b"")


BAD_FILES = {  # builder, words the one-sentence message must hold
    "plain state_dict": (_plain_state_dict, ["not a trainlab checkpoint", "load_weights"]),
    "newer format": (_newer_version, ["format version 2", "upgrade trainlab"]),
    "odd format": (_string_version, ["format version '1'"]),
    "random bytes": (_random_bytes, ["not a checkpoint file", "corrupt"]),
    "text file": (_text_file, ["not a checkpoint file", "another format"]),
    "torn": (_torn, ["torn or corrupt", "earlier checkpoint"]),
    "torn early": (_torn_early, ["torn or corrupt", "earlier checkpoint"]),
    "empty": (_empty, ["torn or corrupt"]),
}


@pytest.fixture
def real_checkpoint(tmp_path) -> Path:
    path = tmp_path / "real.pt"
    save_checkpoint(path, make_checkpoint(nn.Linear(64, 64), model_spec=SPEC, epoch=1))
    return path


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_give_one_clear_checkpoint_error(tmp_path, real_checkpoint, case):
    build, words = BAD_FILES[case]
    path = tmp_path / "bad.pt"
    build(path, real_checkpoint)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, map_location="cpu")
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    for word in words:
        assert word in msg


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("command,case", [("inspect", "random bytes"), ("inspect", "torn"),
                                          ("predict", "random bytes"), ("predict", "torn"),
                                          ("predict", "plain state_dict"), ("predict", "newer format")])
def test_bad_files_through_the_cli_exit_1_with_one_line(tmp_path, real_checkpoint, capsys, command, case):
    build, words = BAD_FILES[case]
    path = tmp_path / "bad.pt"
    build(path, real_checkpoint)
    code = main([command, str(path), "--device", "cpu"] if command == "predict" else [command, str(path)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("trainlab: error: ") and err.count("\n") == 1
    assert all(w in err for w in words) and "Traceback" not in err


def test_every_load_is_weights_only(tmp_path, real_checkpoint, monkeypatch):
    from trainlab.analysis.inspection import describe

    calls = []
    real_load = torch.load

    def spy(*args, **kw):
        calls.append(kw.get("weights_only"))
        return real_load(*args, **kw)

    monkeypatch.setattr(torch, "load", spy)
    save_weights(nn.Linear(3, 2), tmp_path / "w.pt")
    load_weights(nn.Linear(3, 2), tmp_path / "w.pt")
    load_checkpoint(real_checkpoint)
    describe(real_checkpoint)
    assert len(calls) == 4 and all(c is True for c in calls)


# ---------------------------------------------------------------- the checkpoint folder

def test_save_writes_the_file_and_a_manifest_entry(tmp_path):
    folder = CheckpointDir(tmp_path / "checkpoints")
    ck = tiny_ckpt(epoch=3, value=0.25)
    folder.save("last.pt", ck, epoch=3, global_step=30, metric="val_loss", value=0.25)
    path = folder.folder / "last.pt"
    entry = folder.manifest()["files"]["last.pt"]
    assert entry["sha256"] == sha256_file(path) and entry["bytes"] == path.stat().st_size
    assert (entry["epoch"], entry["global_step"], entry["metric"], entry["value"]) == (3, 30, "val_loss", 0.25)
    assert folder.verify("last.pt") is None
    back = load_checkpoint(path)
    assert back["epoch"] == 3 and torch.equal(back["model"]["weight"], ck["model"]["weight"])
    assert sorted(p.name for p in folder.folder.iterdir()) == ["last.pt", "manifest.json"]


def test_verify_detects_an_altered_byte_and_a_file_missing_from_the_manifest(tmp_path):
    folder = CheckpointDir(tmp_path)
    folder.save("last.pt", tiny_ckpt(), epoch=1, global_step=10)
    flip_byte(folder.folder / "last.pt")
    assert "sha256 does not match" in folder.verify("last.pt")
    save_checkpoint(folder.folder / "stray.pt", tiny_ckpt())  # written, never recorded
    assert folder.verify("stray.pt") == "not in the manifest"
    assert folder.verify("gone.pt") == "missing"


def test_newest_good_skips_unverified_files_with_a_warning(tmp_path, caplog):
    folder = CheckpointDir(tmp_path)
    # saved out of name order: the newest is chosen by global step, not by name or time
    for name, step in (("epoch-0002.pt", 20), ("last.pt", 30), ("best.pt", 15), ("epoch-0001.pt", 10)):
        folder.save(name, tiny_ckpt(step // 10), epoch=step // 10, global_step=step)
    assert folder.newest_good()[0] == "last.pt"
    flip_byte(folder.folder / "last.pt")
    caplog.set_level(logging.WARNING, logger="trainlab")
    name, entry = folder.newest_good()
    assert (name, entry["global_step"]) == ("epoch-0002.pt", 20)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "last.pt is unverified" in warned[0] and "sha256 does not match" in warned[0]


def test_newest_good_warns_about_unlisted_files_and_finds_none(tmp_path, caplog):
    folder = CheckpointDir(tmp_path)
    save_checkpoint(folder.folder / "last.pt", tiny_ckpt())  # no manifest entry (killed before it)
    caplog.set_level(logging.WARNING, logger="trainlab")
    assert folder.newest_good() is None
    assert any("not in the manifest" in r.getMessage() for r in caplog.records)


def test_prune_periodic_keeps_the_k_newest_epoch_files(tmp_path):
    folder = CheckpointDir(tmp_path)
    folder.save("last.pt", tiny_ckpt(), epoch=1, global_step=1)
    for epoch in (1, 2, 3, 9999, 10000):  # numeric order, even past four digits
        folder.save(f"epoch-{epoch:04d}.pt", tiny_ckpt(), epoch=epoch, global_step=epoch)
    folder.prune_periodic(2)
    on_disk = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert on_disk == ["epoch-10000.pt", "epoch-9999.pt", "last.pt"]
    assert sorted(folder.manifest()["files"]) == on_disk
    folder.prune_periodic(0)  # 0 keeps all
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == on_disk


def test_periodic_files_are_deleted_only_after_the_new_one_is_written_and_verified(
        tmp_path, tiny_data, monkeypatch):
    removed = []
    real_remove = CheckpointDir.remove

    def spy(self, name):
        epochs = sorted(int(n[6:10]) for n in self.manifest()["files"] if n.startswith("epoch-"))
        newest = f"epoch-{epochs[-1]:04d}.pt"
        removed.append((name, newest, self.verify(newest)))
        real_remove(self, name)

    monkeypatch.setattr(CheckpointDir, "remove", spy)
    result = train_tiny(tmp_path / "runs", tiny_data, epochs=3, save_every=1, keep=1)
    assert removed == [("epoch-0001.pt", "epoch-0002.pt", None), ("epoch-0002.pt", "epoch-0003.pt", None)]
    folder = result.run_dir / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["best.pt", "epoch-0003.pt", "last.pt"]


# ---------------------------------------------------------------- a full disk

def full_disk_after(monkeypatch, nbytes: int):
    """_write_all writes at most `nbytes` more, then fails as a full disk does."""
    left = [nbytes]

    def write_some(f, data):
        n = min(left[0], len(data))
        f.write(bytes(data[:n]))
        left[0] -= n
        if n < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "_write_all", write_some)


def test_a_full_disk_mid_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    folder = CheckpointDir(tmp_path)
    old = tiny_ckpt(epoch=1, value=0.5)
    folder.save("last.pt", old, epoch=1, global_step=10)
    manifest_before = folder.manifest_path.read_bytes()
    file_before = (tmp_path / "last.pt").read_bytes()
    full_disk_after(monkeypatch, 700)
    with pytest.raises(StoreError) as e:
        folder.save("last.pt", tiny_ckpt(epoch=2), epoch=2, global_step=20)
    msg = str(e.value)
    assert "disk filled up" in msg and "partial file was removed" in msg and "intact" in msg
    assert not temp_files(tmp_path)
    assert (tmp_path / "last.pt").read_bytes() == file_before
    assert folder.manifest_path.read_bytes() == manifest_before
    assert folder.verify("last.pt") is None and folder.newest_good()[0] == "last.pt"
    back = load_checkpoint(tmp_path / "last.pt")
    assert back["epoch"] == 1 and torch.equal(back["model"]["weight"], old["model"]["weight"])


def test_a_full_disk_during_a_first_save_leaves_nothing_behind(tmp_path, monkeypatch):
    full_disk_after(monkeypatch, 100)
    with pytest.raises(StoreError, match="disk filled up"):
        save_checkpoint(tmp_path / "w.pt", tiny_ckpt())
    assert list(tmp_path.iterdir()) == []


def test_free_space_is_checked_before_anything_is_written(tmp_path, monkeypatch):
    folder = CheckpointDir(tmp_path)
    folder.save("last.pt", tiny_ckpt(), epoch=1, global_step=10)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2**30, 2**30 - 2**20, 2**20))

    def must_not_write(f, data):
        raise AssertionError("wrote despite too little free space")

    monkeypatch.setattr(atomic, "_write_all", must_not_write)
    for save in (lambda: folder.save("last.pt", tiny_ckpt(2), epoch=2, global_step=20),
                 lambda: save_checkpoint(tmp_path / "other.pt", tiny_ckpt())):
        with pytest.raises(StoreError) as e:
            save()
        assert "not enough free disk space" in str(e.value) and "1.0 MiB free" in str(e.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ---------------------------------------------------------------- CUDA-tagged files on a CPU

def assert_plain_load_fails_without_a_gpu(path: Path) -> None:
    if torch.cuda.is_available():  # a GPU machine: the tags are honoured
        assert torch.load(path, weights_only=True)
    else:
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)


def test_cuda_tagged_file_plain_load_fails_trainlab_load_works(tmp_path):
    net = small_net()
    with cuda_location_tags():
        save_checkpoint(tmp_path / "gpu.pt", make_checkpoint(net, model_spec=SPEC, epoch=1))
        torch.save(net.state_dict(), tmp_path / "gpu-weights.pt")
    assert_plain_load_fails_without_a_gpu(tmp_path / "gpu.pt")
    ck = load_checkpoint(tmp_path / "gpu.pt", map_location="cpu")
    assert all(v.device.type == "cpu" for v in ck["model"].values())
    assert_state_equal(ck["model"], net.state_dict())
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3))
    load_weights(fresh, tmp_path / "gpu-weights.pt")  # default: the parameters' device
    assert_state_equal(fresh.state_dict(), net.state_dict())
    load_weights(fresh, tmp_path / "gpu-weights.pt", map_location="cpu")
    if not torch.cuda.is_available():  # no map_location: one sentence, not a torch traceback
        with pytest.raises(CheckpointError, match="CUDA"):
            load_checkpoint(tmp_path / "gpu.pt")


def test_cuda_tagged_run_loads_and_resumes_on_cpu(tmp_path, tiny_data):
    from trainlab.api import load_model, resume
    from trainlab.training.session import Session

    run = train_tiny(tmp_path / "runs", tiny_data).run_dir
    folder = CheckpointDir(run / "checkpoints")
    original = load_checkpoint(folder.folder / "last.pt", map_location="cpu")
    with cuda_location_tags():  # as if trained on a GPU: every file says cuda:0
        for name, entry in folder.manifest()["files"].items():
            info = {k: entry[k] for k in ("epoch", "global_step", "metric", "value")}
            folder.save(name, load_checkpoint(folder.folder / name, map_location="cpu"), **info)
        save_checkpoint(run / "model.pt", load_checkpoint(run / "model.pt", map_location="cpu"))
    assert_plain_load_fails_without_a_gpu(folder.folder / "last.pt")

    # the optimizer state lands on the parameters' device, values unchanged
    session = Session(resolve({**original["config"], "runs_dir": str(tmp_path / "other")}), tiny_data,
                      progress=False)
    session.load_state_dict(load_checkpoint(folder.folder / "last.pt", map_location="cpu"))
    opt = session.optimizer.state_dict()["state"]
    assert set(opt) == set(original["optimizer"]["state"])
    for p in session.model.parameters():
        state = session.optimizer.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].device == p.device
    for pid, st in original["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt[pid][key].cpu(), st[key])

    model, _ = load_model(run)  # device "auto" -> the CPU here
    assert next(model.parameters()).device.type == "cpu"
    result = resume(run, epochs=3, data=tiny_data, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


# A trained model's file with one field forged: each ends in one sentence naming the file,
# before anything the forged value would size is allocated (a 9e8-parameter spec in a file
# holding ~30,000 weights is refused on the meta device, not built).
FORGED_FIELDS = {
    "a huge input in a small file": (lambda c: c["model_spec"].update(input_shape=[1, 1000, 1000]),
                                     "holds 2"),
    "a million classes in a small file": (lambda c: (c["model_spec"].update(num_classes=1_000_000),
                                                     c.update(classes=[f"c{i}" for i in range(1_000_000)])),
                                          "weight values"),
    "a mean per channel too many": (lambda c: c.update(mean=[0.1] * 7), "'mean' is not a finite value per input"),
    "a NaN mean": (lambda c: c.update(mean=[float("nan")]), "'mean' is not a finite"),
    "a std of 0": (lambda c: c.update(std=[0.0]), "'std' is not a positive value"),
    "an infinite std": (lambda c: c.update(std=[float("inf")]), "'std' is not a positive value"),
    "an image size of -1": (lambda c: c["config"].update(image_size=-1), "image_size -1 is not its model's input"),
    "an image size that is text": (lambda c: c["config"].update(image_size="big"), "image_size 'big'"),
}


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    from conftest import tiny_dataset

    runs = tmp_path_factory.mktemp("forged-runs")
    return train_tiny(runs, data=tiny_dataset(), epochs=1).run_dir / "model.pt"


@pytest.mark.parametrize("case", FORGED_FIELDS)
@pytest.mark.parametrize("command", ["predict", "export"])
def test_forged_fields_of_a_trained_model_end_in_one_sentence(tmp_path, trained_model, capsys, case, command):
    forge, words = FORGED_FIELDS[case]
    ckpt = load_checkpoint(trained_model, map_location="cpu")
    forge(ckpt)
    path = tmp_path / "forged.pt"
    save_checkpoint(path, ckpt)
    args = [command, str(path), "--device", "cpu"] if command == "predict" else [command, str(path), "-o", str(tmp_path / "out")]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("trainlab: error: ") and err.count("\n") == 1, err
    assert str(path) in err and words in err and "damaged or forged" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing exported from a forged file
