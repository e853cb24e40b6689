"""Resume at its edges: no file makes it import code, a bad manifest never erases work, an
override takes effect or is refused by name, and a foreign checkpoint is refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SRC, idx_folder, write_idx_folder

from trainlab.cli.main import main
from trainlab.config import resolve
from trainlab.errors import ConfigError, TrainlabError
from trainlab.store.checkpoint import sha256_file
from trainlab.store.schema import load_checkpoint
from trainlab.store.runs import read_metrics
from trainlab.training.resume import resume
from trainlab.training.start import train

EVIL = '''import os, pathlib
pathlib.Path(os.environ["EVIL_MARKER"]).write_text("imported")
from trainlab.models import mlp

def make(input_shape, num_classes):
    pathlib.Path(os.environ["EVIL_MARKER"] + ".called").write_text("called")
    return mlp(input_shape, num_classes, hidden=(8,))
'''


idx_dir = idx_folder(300, 100)


def cfg(idx_dir, tmp_path, name, **kw):
    return resolve({"dataset": f"idx:{idx_dir}", "runs_dir": str(tmp_path), "name": name, "quiet": True,
                    "threads": 1, "val_size": 100, "batch_size": 50, "epochs": 2, "seed": 1,
                    "model": "mlp", "model_kwargs": {"hidden": [16]}, "recipe": "textbook", **kw})


# ---------------------------------------------------------------- nothing imported from a file

@pytest.fixture(scope="module")
def evil_run(idx_dir, tmp_path_factory):
    """A run whose files name `evilmod:make`, trained from the user's own command line."""
    base = tmp_path_factory.mktemp("evil")
    mods = base / "mods"
    mods.mkdir()
    (mods / "evilmod.py").write_text(EVIL)
    marker = base / "marker"
    e = dict(os.environ, PYTHONPATH=str(SRC), EVIL_MARKER=str(marker))
    args = ["train", "--dataset", f"idx:{idx_dir}", "--runs-dir", str(base), "--name", "run", "--threads", "1",
            "--val-size", "100", "--batch-size", "50", "--epochs", "1", "--model", "evilmod:make", "--quiet"]
    done = subprocess.run([sys.executable, "-m", "trainlab", *args], cwd=mods, env=e, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert marker.exists()  # the user's own command may import what it names
    return base, mods, marker, e


def _clear(marker: Path):
    for p in (marker, Path(str(marker) + ".called")):
        p.unlink(missing_ok=True)


COMMANDS = {
    "resume": ["resume", "{run}", "--epochs", "2"],
    "train --resume": ["train", "--resume", "{run}", "--epochs", "2"],
    "predict": ["predict", "{run}", "-n", "2"],
    "evaluate": ["evaluate", "{run}", "--no-plots"],
    "export": ["export", "{run}", "-o", "{out}"],
    "report": ["report", "{run}", "-o", "{out}/r.html"],
}


@pytest.mark.parametrize("where", ["planted beside the run (cwd)", "installed (PYTHONPATH)"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_command_imports_a_module_a_run_folder_names(evil_run, tmp_path, command, where):
    base, mods, marker, e = evil_run
    _clear(marker)
    env = dict(e, PYTHONPATH=os.pathsep.join([str(SRC), str(mods)])) if "installed" in where else e
    args = [a.format(run=base / "run", out=tmp_path / "out") for a in COMMANDS[command]]
    done = subprocess.run([sys.executable, "-m", "trainlab", *args], cwd=mods, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [x for x in done.stderr.strip().splitlines() if x.startswith("trainlab: ")]
    assert len(errors) == 1 and "--allow-import evilmod" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists() and not Path(str(marker) + ".called").exists()


def test_load_model_from_the_library_refuses_the_same_file(evil_run, monkeypatch):
    from trainlab import load_model

    base, mods, marker, e = evil_run
    _clear(marker)
    monkeypatch.syspath_prepend(str(mods))
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    with pytest.raises(ConfigError, match="--allow-import evilmod"):
        load_model(base / "run")
    assert not marker.exists()


def test_allow_import_names_the_trusted_module_and_then_it_builds(evil_run, tmp_path):
    base, mods, marker, e = evil_run
    _clear(marker)
    done = subprocess.run([sys.executable, "-m", "trainlab", "predict", str(base / "run"), "-n", "2",
                           "--allow-import", "evilmod"], cwd=mods, env=e, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert Path(str(marker) + ".called").exists()


def test_the_installed_command_finds_a_model_module_in_the_current_folder(idx_dir, tmp_path):
    exe = Path(sys.executable).parent / "trainlab"
    assert exe.exists(), f"the trainlab console script is not installed beside {sys.executable}"
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "mymod.py").write_text("from trainlab.models import mlp\n"
                                   "def net(input_shape, num_classes):\n    return mlp(input_shape, num_classes, hidden=(8,))\n")
    done = subprocess.run([str(exe), "train", "--dataset", f"idx:{idx_dir}", "--runs-dir", str(tmp_path),
                           "--name", "m", "--threads", "1", "--val-size", "100", "--batch-size", "50", "--epochs", "1",
                           "--model", "mymod:net", "--quiet"], cwd=mods, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=""))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("spec", [":", "mod:", ":fn", "a b:c", "os:system;x", "../x:y"])
def test_malformed_import_paths_are_one_sentence_usage_errors(spec):
    from trainlab.models import build

    with pytest.raises(ConfigError, match="not a valid import path|unknown model"):
        build(spec, (1, 4, 4), 2)


# ---------------------------------------------------------------- a bad manifest never erases work

@pytest.mark.parametrize("damage", ["deleted", "garbage", "a folder"])
def test_resume_with_a_lost_manifest_continues_instead_of_starting_over(idx_dir, tmp_path, damage):
    first = train(cfg(idx_dir, tmp_path, "r", epochs=2), progress=False)
    manifest = first.run_dir / "checkpoints" / "manifest.json"
    last_before = (first.run_dir / "checkpoints" / "last.pt").read_bytes()
    if damage == "deleted":
        manifest.unlink()
    elif damage == "garbage":
        manifest.write_bytes(b"\xff\xfe{")
    else:
        manifest.unlink()
        manifest.mkdir()
    again = resume(first.run_dir, epochs=3, progress=False)
    rows = read_metrics(first.run_dir)
    assert [r["epoch"] for r in rows if "event" not in r] == [1, 2, 3]  # not restarted from 0
    resumed = [r for r in rows if r.get("event") == "resume"]
    assert resumed and resumed[0]["epoch"] == 2
    assert len(again.history) == 3
    assert last_before != (first.run_dir / "checkpoints" / "last.pt").read_bytes()  # moved on, by design


def test_a_restart_sets_unverifiable_files_and_old_metrics_aside(idx_dir, tmp_path):
    first = train(cfg(idx_dir, tmp_path, "r", epochs=1), progress=False)
    ck = first.run_dir / "checkpoints"
    for name in ("last.pt", "best.pt"):
        (ck / name).write_bytes(b"PK\x03\x04torn")
    metrics_before = (first.run_dir / "metrics.jsonl").read_bytes()
    resume(first.run_dir, progress=False)
    aside = list(ck.glob("unusable-*"))
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["best.pt", "last.pt"]
    kept = list(first.run_dir.glob("metrics-before-restart-*.jsonl"))
    assert len(kept) == 1 and kept[0].read_bytes() == metrics_before


@pytest.mark.parametrize("replaced", [["last.pt"], ["last.pt", "best.pt"]])
def test_resume_refuses_a_checkpoint_of_another_run(idx_dir, tmp_path, replaced, caplog):
    a = train(cfg(idx_dir, tmp_path, "a", epochs=1), progress=False)
    b = train(cfg(idx_dir, tmp_path, "b", epochs=1, model="mlp-reg", model_kwargs={"hidden": [8]}), progress=False)
    target = a.run_dir / "checkpoints"
    data = json.loads((target / "manifest.json").read_text())
    for name in replaced:
        shutil.copy(b.run_dir / "checkpoints" / "last.pt", target / name)
        data["files"][name]["sha256"] = sha256_file(target / name)  # re-hashed: verifies
        data["files"][name]["global_step"] = 10**6
    (target / "manifest.json").write_text(json.dumps(data))
    before = {n: (target / n).read_bytes() for n in replaced}
    if len(replaced) == 2:
        with pytest.raises(TrainlabError, match=r"no checkpoint in .* can be used .*does not belong to "
                                                r"the run .*model: 'mlp' -> 'mlp-reg'.*nothing was changed"):
            resume(a.run_dir, epochs=2, progress=False)
        assert {n: (target / n).read_bytes() for n in replaced} == before
    else:  # the run's own best.pt is used instead, and the foreign file is named
        again = resume(a.run_dir, epochs=2, progress=False)
        assert "does not belong to the run" in caplog.text
        assert load_checkpoint(again.run_dir / "model.pt")["model_spec"]["name"] == "mlp"


def test_resume_of_a_forged_run_refuses_a_model_larger_than_its_weights_unbuilt(idx_dir, tmp_path):
    """config.toml and every checkpoint agree on widths of 20,000 (4.2e8 parameters, 1.7 GB if
    built) while the weights are a 16-wide MLP's: refused before the model is allocated."""
    from trainlab.store.checkpoint import save_checkpoint

    first = train(cfg(idx_dir, tmp_path, "r", epochs=1), progress=False)
    toml = first.run_dir / "config.toml"
    text = toml.read_text()
    assert "hidden = [\n    16,\n]" in text
    toml.write_text(text.replace("hidden = [\n    16,\n]", "hidden = [20000, 20000]"))
    ck = first.run_dir / "checkpoints"
    manifest = json.loads((ck / "manifest.json").read_text())
    for name in manifest["files"]:
        ckpt = load_checkpoint(ck / name)
        ckpt["config"]["model_kwargs"] = {"hidden": [20000, 20000]}
        save_checkpoint(ck / name, ckpt)
        manifest["files"][name]["sha256"] = sha256_file(ck / name)
    (ck / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrainlabError, match=r"its spec describes 415,920,010 parameters but the file holds "
                                            r"12,730 weight values: the file is damaged or forged"):
        resume(first.run_dir, epochs=2, progress=False)


# ---------------------------------------------------------------- overrides take effect or are refused

def _rates(path: Path) -> list[float]:
    return [g["lr"] for g in load_checkpoint(path)["optimizer"]["param_groups"]]


def test_resume_lr_changes_the_rate_the_optimizer_really_uses(idx_dir, tmp_path):
    first = train(cfg(idx_dir, tmp_path, "r", epochs=2, lr=1e-3), progress=False)
    last = first.run_dir / "checkpoints" / "last.pt"
    assert _rates(last) == [1e-3, 1e-3]
    assert main(["resume", str(first.run_dir), "--epochs", "3", "--lr", "1e-4"]) == 0
    assert _rates(last) == pytest.approx([1e-4, 1e-4])
    assert load_checkpoint(last)["config"]["lr"] == 1e-4
    events = [r for r in read_metrics(first.run_dir) if r.get("event") == "override"]
    assert events == [{"event": "override", "epoch": 2, "changes": {"lr": [1e-3, 1e-4]}}]
    assert "lr = 0.0001" in (first.run_dir / "config.toml").read_text()


def test_resume_lr_keeps_the_schedule_shape_and_moves_its_peak(idx_dir, tmp_path):
    kw = dict(epochs=2, lr=1e-2, schedule="cosine")
    same = train(cfg(idx_dir, tmp_path, "same", **kw), progress=False)
    lower = train(cfg(idx_dir, tmp_path, "lower", **kw), progress=False)
    resume(same.run_dir, epochs=3, progress=False)
    resume(lower.run_dir, epochs=3, overrides={"lr": 1e-3}, allow_changes=True, progress=False)
    a = _rates(same.run_dir / "checkpoints" / "last.pt")
    b = _rates(lower.run_dir / "checkpoints" / "last.pt")
    assert b == pytest.approx([x / 10 for x in a])


def test_weight_decay_override_reaches_the_decaying_group(idx_dir, tmp_path):
    first = train(cfg(idx_dir, tmp_path, "r", epochs=1, weight_decay=0.0), progress=False)
    resume(first.run_dir, epochs=2, overrides={"weight_decay": 0.05}, allow_changes=True, progress=False)
    groups = load_checkpoint(first.run_dir / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]


def test_a_changeable_override_without_allow_changes_is_refused_by_name(idx_dir, tmp_path):
    first = train(cfg(idx_dir, tmp_path, "r", epochs=1), progress=False)
    with pytest.raises(ConfigError, match=r"label_smoothing: 0.0 -> 0.1.*--allow-changes"):
        resume(first.run_dir, epochs=2, overrides={"label_smoothing": 0.1}, progress=False)


@pytest.mark.parametrize("override", [{"optimizer": "sgd"}, {"seed": 5}, {"batch_size": 25},
                                      {"schedule": "cosine"}, {"model": "cnn"}, {"val_size": 50}])
def test_overrides_that_cannot_take_effect_are_refused_by_name(idx_dir, tmp_path, override):
    first = train(cfg(idx_dir, tmp_path, "r", epochs=1), progress=False)
    key = next(iter(override))
    with pytest.raises(ConfigError, match=rf"cannot change {key}:"):
        resume(first.run_dir, epochs=2, overrides=override, allow_changes=True, progress=False)


def test_train_resume_with_other_flags_applies_or_refuses_each(idx_dir, tmp_path, capsys):
    first = train(cfg(idx_dir, tmp_path, "r", epochs=1), progress=False)
    assert main(["train", "--resume", str(first.run_dir), "--lr", "5", "--model", "cnn", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "cannot change model: 'mlp' -> 'cnn'" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--resume", str(first.run_dir), "--lr", "5e-4", "--epochs", "2"]) == 0
    assert _rates(first.run_dir / "checkpoints" / "last.pt") == pytest.approx([5e-4, 5e-4])


def test_the_nan_advice_works_as_printed(idx_dir, tmp_path, capsys):
    """A healthy epoch, then a rate that diverges: the run stops with a command, and that
    command, run exactly as printed, finishes the run (the fault of the first wave: the
    override did nothing, and last.pt already held the diverging weights)."""
    base = ["--dataset", f"idx:{idx_dir}", "--runs-dir", str(tmp_path), "--name", "nan", "--threads", "1",
            "--val-size", "100", "--batch-size", "50", "--model", "mlp", "--recipe", "textbook",
            "--optimizer", "sgd", "--momentum", "0", "--quiet"]
    assert main(["train", *base, "--epochs", "1", "--lr", "0.05"]) == 0
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "nan"), "--epochs", "4", "--lr", "10"]) == 1
    err = capsys.readouterr().err
    advice = re.search(r"trainlab (resume \S+ (?:--from best.pt )?--lr \S+)", err)
    assert advice and "Traceback" not in err, err
    assert main(advice.group(1).split()) == 0, capsys.readouterr().err
    model = load_checkpoint(tmp_path / "nan" / "model.pt")["model"]
    assert all(torch.isfinite(v).all() for v in model.values())
    assert list((tmp_path / "nan" / "checkpoints").glob("superseded-*/last.pt"))  # kept aside


def test_tuple_model_kwargs_resume(idx_dir, tmp_path):
    first = train(cfg(idx_dir, tmp_path, "t", epochs=1, model_kwargs={"hidden": (16,)}), progress=False)
    assert len(resume(first.run_dir, epochs=2, progress=False).history) == 2


def test_reset_optimizer_with_lr_uses_the_new_rate_once(idx_dir, tmp_path):
    first = train(cfg(idx_dir, tmp_path, "r", epochs=2, lr=1e-3), progress=False)
    fork = resume(first.run_dir, epochs=3, into=tmp_path / "fork", reset_optimizer=True,
                  overrides={"lr": 1e-4}, allow_changes=True, progress=False)
    assert _rates(fork.run_dir / "checkpoints" / "last.pt") == pytest.approx([1e-4, 1e-4])


def test_reset_optimizer_in_place_is_a_usage_error(idx_dir, tmp_path, capsys):
    first = train(cfg(idx_dir, tmp_path, "r", epochs=1), progress=False)
    assert main(["resume", str(first.run_dir), "--reset-optimizer"]) == 2
    assert "--reset-optimizer needs --into" in capsys.readouterr().err


def test_momentum_change_is_refused_where_the_optimizer_ignores_it(idx_dir, tmp_path):
    first = train(cfg(idx_dir, tmp_path, "r", epochs=1), progress=False)  # textbook: adam
    with pytest.raises(ConfigError, match="only sgd uses it"):
        resume(first.run_dir, epochs=2, overrides={"momentum": 0.5}, allow_changes=True, progress=False)


def test_an_override_recorded_before_a_kill_is_applied_again(idx_dir, tmp_path):
    """resume --lr writes config.toml first; killed before the next save, the checkpoint still
    holds the old rate: the next plain resume applies the recorded one."""
    first = train(cfg(idx_dir, tmp_path, "r", epochs=2, lr=1e-3), progress=False)
    toml = first.run_dir / "config.toml"
    toml.write_text(toml.read_text().replace("lr = 0.001", "lr = 0.0001"))
    resume(first.run_dir, epochs=3, progress=False)
    assert _rates(first.run_dir / "checkpoints" / "last.pt") == pytest.approx([1e-4, 1e-4])


def test_flags_on_train_resume_do_not_waive_the_data_check(idx_dir, tmp_path, capsys):
    first = train(cfg(idx_dir, tmp_path, "r", epochs=1), progress=False)
    other = write_idx_folder(tmp_path / "other", n_train=300, n_test=100, seed=9)
    # the same folder, other contents (a user's edited data), restored afterwards
    shutil.copytree(idx_dir, tmp_path / "saved-idx")
    for f in other.iterdir():
        shutil.copy(f, idx_dir / f.name)
    try:
        assert main(["train", "--resume", str(first.run_dir), "--epochs", "2", "--quiet"]) == 2
        assert "the data differs" in capsys.readouterr().err
    finally:
        for f in (tmp_path / "saved-idx").iterdir():
            shutil.copy(f, idx_dir / f.name)


def test_a_config_file_never_imports_code_by_itself(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "marker"
    (tmp_path / "evilmod.py").write_text(EVIL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    (tmp_path / "c.toml").write_text('model = "evilmod:make"\n')
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "--allow-import evilmod" in capsys.readouterr().err and not marker.exists()


def _poison(run_dir: Path, name: str, part: str) -> None:
    """`name` re-saved through the manifest (so it verifies) with a NaN in its weights or its
    optimizer state: a checkpoint that diverged yet was saved."""
    from trainlab.store.manifest import CheckpointDir

    ckpts = CheckpointDir(run_dir / "checkpoints")
    ckpt = load_checkpoint(ckpts.folder / name)
    info = {k: v for k, v in ckpts.entry(name).items() if k not in ("sha256", "bytes", "saved", "replaces")}
    if part == "weights":
        next(iter(ckpt["model"].values())).view(-1)[0] = float("nan")
    else:
        state = next(iter(ckpt["optimizer"]["state"].values()))
        next(v for v in state.values() if torch.is_tensor(v) and v.numel() > 1).view(-1)[0] = float("inf")
    ckpts.save(name, ckpt, **info)
    assert ckpts.verify(name) is None


NAN_BASE = ["--threads", "1", "--val-size", "100", "--batch-size", "50", "--model", "mlp", "--recipe", "textbook",
            "--optimizer", "sgd", "--momentum", "0.9", "--quiet"]


@pytest.mark.parametrize("part", ["weights", "optimizer"])
def test_the_nan_advice_never_starts_from_a_checkpoint_that_diverged(idx_dir, tmp_path, capsys, part):
    """best.pt (and last.pt) saved with NaN/inf in them: resuming from them diverges at any rate,
    so the advice is a fresh start at a lower rate, and that command, as printed, works."""
    import shlex

    run = tmp_path / "nan"
    base = ["--dataset", f"idx:{idx_dir}", "--runs-dir", str(tmp_path), "--name", "nan", *NAN_BASE]
    assert main(["train", *base, "--epochs", "1", "--lr", "0.05"]) == 0
    for name in ("best.pt", "last.pt"):
        _poison(run, name, part)
    capsys.readouterr()
    assert main(["resume", str(run), "--epochs", "3"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "--from best.pt" not in err and "resume" not in err.split("(the weights diverged)")[-1], err
    assert "best.pt cannot be the start: its " + ("weights" if part == "weights" else "optimizer state") in err
    advice = re.search(r"trainlab (train --config .* --restart)", err)
    assert advice, err
    assert main(shlex.split(advice.group(1))) == 0, capsys.readouterr().err
    model = load_checkpoint(run / "model.pt")["model"]
    assert all(torch.isfinite(v).all() for v in model.values())


def test_the_nan_advice_is_not_given_twice(idx_dir, tmp_path, capsys):
    """Resumed from best.pt and diverged again: the advice says so and does not send the user
    back to the same start (the loop: each failure advised a tenth of the rate from best.pt)."""
    run = tmp_path / "nan"
    base = ["--dataset", f"idx:{idx_dir}", "--runs-dir", str(tmp_path), "--name", "nan", *NAN_BASE]
    assert main(["train", *base, "--epochs", "1", "--lr", "0.05"]) == 0
    capsys.readouterr()
    assert main(["resume", str(run), "--from", "best.pt", "--epochs", "3", "--lr", "10"]) == 1
    err = capsys.readouterr().err
    assert "this run was already resumed from best.pt (epoch 1) at lr 10 and diverged again" in err, err
    assert "trainlab resume" not in err and "--lr 1 --grad-clip 1.0 --restart" in err, err


# ---------------------------------------------------------------- one name for one resume point

@pytest.mark.parametrize("mid_epoch", [True, False])
def test_the_interrupt_the_resume_line_and_the_resume_event_name_one_point_alike(idx_dir, tmp_path, caplog, mid_epoch):
    """Stopped by SIGTERM mid-epoch (or at an epoch's end): the message, the console's resume line
    and metrics.jsonl's resume event say the same epoch; the event's `epoch` counts epochs complete."""
    import signal

    from trainlab.training.callbacks import Callback
    from trainlab.training.signals import Interrupted

    steps = 6  # (300 - 100) / 50 = 4 steps an epoch: the stop falls in epoch 2

    class Term(Callback):
        def on_step_end(self, run):
            if run.state.global_step == (steps if mid_epoch else 8):
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted) as e:
        train(cfg(idx_dir, tmp_path, "t", epochs=3), progress=False, callbacks=[Term()])
    words = "epoch 2, step 2" if mid_epoch else "the end of epoch 2"
    assert f"stopped at {words} and saved" in str(e.value)
    caplog.set_level("INFO", logger="trainlab")
    resume(tmp_path / "t", progress=False)
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("resume: ")
            ][-1].endswith(f"from last.pt at {words}")
    event = [r for r in read_metrics(tmp_path / "t") if r.get("event") == "resume"][-1]
    assert event["at"] == words and event["epoch"] == (1 if mid_epoch else 2)
