"""Resume is exact: interrupted anywhere, in another process, the run ends bitwise equal to
the uninterrupted one. Also: kill -9 at random moments, early stopping, forks, refusals."""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_command, cli_env, idx_folder, make_images, wait_until

from trainlab.cli.main import main as cli_main
from trainlab.config import resolve
from trainlab.errors import ConfigError
from trainlab.store.manifest import CheckpointDir
from trainlab.store.schema import load_checkpoint
from trainlab.training.resume import resume
from trainlab.training.start import train

WORKER = Path(__file__).with_name("resume_worker.py")


idx_dir = idx_folder(600, 200)  # subprocesses load it too


def config(idx_dir, tmp_path, name, **kw) -> dict:
    return {"dataset": f"idx:{idx_dir}", "runs_dir": str(tmp_path), "name": name, "quiet": True,
            "threads": 1, "val_size": 100, "batch_size": 50, "epochs": 3, "seed": 7, **kw}


MODELS = {
    "mlp-reg": dict(model="mlp-reg", model_kwargs={"hidden": [64, 32]}, ema=0.9, translate=2, erase=0.25),
    "cnn": dict(model="cnn", model_kwargs={"channels": [8, 16], "fc": 32}, ema=0.9, translate=2,
                hflip=True, erase=0.25),
}


def strip_time(history):
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in history]


def assert_same_run(a_dir: Path, b_dir: Path):
    a = load_checkpoint(a_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(b_dir / "checkpoints" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k
    if a.get("ema") is not None:
        for k in a["ema"]:
            assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert strip_time(a["history"]) == strip_time(b["history"])
    assert a["global_step"] == b["global_step"]


@pytest.mark.parametrize("model,step", [("mlp-reg", 10), ("mlp-reg", 17), ("cnn", 4), ("cnn", 20)],
                         ids=["mlp-reg-end-of-epoch-1", "mlp-reg-mid-schedule", "cnn-in-epoch-1",
                              "cnn-mid-schedule"])
def test_resume_in_fresh_process_is_bitwise_exact(idx_dir, tmp_path, model, step):
    """10 steps an epoch, 3 epochs, onecycle, EMA, augmentation, Dropout and BatchNorm on."""
    full = train(resolve(config(idx_dir, tmp_path, "full", **MODELS[model])), progress=False)
    cfg = config(idx_dir, tmp_path, "cut", **MODELS[model])
    proc = subprocess.run([sys.executable, str(WORKER), "interrupt", str(step), json.dumps(cfg)],
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    assert "trainlab resume" in proc.stderr
    ck = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    # the signal lands while the next batch is fetched; that step completes, then it stops
    assert ck["global_step"] == (step if step % 10 == 0 else step + 1)
    proc = subprocess.run([sys.executable, str(WORKER), "resume", str(tmp_path / "cut")],
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(full.run_dir, tmp_path / "cut")
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "resume" for r in rows)  # the resume point is marked
    assert [r["epoch"] for r in rows if "epoch" in r and "event" not in r] == [1, 2, 3]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_on_the_cli_saves_and_prints_the_resume_command(idx_dir, tmp_path, sig):
    """Ctrl-C, a scheduler's SIGTERM, a closed terminal's SIGHUP: save, exit 128 + signal."""
    cmd = [sys.executable, "-m", "trainlab", "train", "--dataset", f"idx:{idx_dir}", "--runs-dir",
           str(tmp_path), "--name", "r", "--threads", "1", "--val-size", "100", "--batch-size", "10",
           "--epochs", "200", "--model", "mlp", "--quiet"]
    proc = subprocess.Popen(cmd, env=cli_env(), stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "r" / "metrics.jsonl"
    assert wait_until(lambda: metrics.exists() and metrics.read_text().strip(), timeout=60), "no epoch in 60 s"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert sig.name in err and f"trainlab resume {tmp_path / 'r'}" in err
    assert "Traceback" not in err
    assert CheckpointDir(tmp_path / "r" / "checkpoints").newest_good() is not None


# ---------------------------------------------------------------- kill -9

KILL_TRIALS = 12  # three per phase aimed at (tmp-partial, pending, renamed, a moment in time)


def _kill_trial(idx_dir, tmp_path, trial: int) -> tuple[str, int | None]:
    """Start training, SIGKILL it at a seeded moment; returns where the kill landed and the
    global step of the newest checkpoint file fully renamed into place before it."""
    rng = random.Random(trial)
    target = ("tmp-partial", "pending", "renamed", "time")[trial % 4]
    nth = rng.randint(1, 5)
    log = tmp_path / f"writes-{trial}.log"
    run = f"k{trial}"
    cmd = cli_command("train", *_cli_args(idx_dir, tmp_path, run), faults=dict(log=log, delay=0.15))
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after = rng.uniform(0.0, 3.0)  # seconds into training (start-up is not the point)
    start = []

    def kill_point() -> str | None:
        """Where the kill lands, once it is due (None while it is not)."""
        if proc.poll() is not None:
            return "after the run finished"
        if not start and (tmp_path / run / "config.toml").exists():
            start.append(time.monotonic())
        lines = log.read_text().splitlines() if log.exists() else []
        hits = [x for x in lines if x.startswith(target) and x.split()[1].endswith(".pt")]
        if len(hits) >= nth or (target == "time" and start and time.monotonic() - start[0] > kill_after):
            return lines[-1] if lines else "before the first save"
        return None

    landed = wait_until(kill_point, timeout=90, interval=0.005)
    proc.kill()  # a finished process is not touched
    proc.wait()
    lines = log.read_text().splitlines() if log.exists() else []
    renamed = [int(x.split()[2]) for x in lines if x.startswith("renamed ") and x.split()[1].endswith(".pt")]
    return landed or "not due within 90 s", max(renamed, default=None)


def _cli_args(idx_dir, tmp_path, name):
    return ["--dataset", f"idx:{idx_dir}", "--runs-dir", str(tmp_path), "--name", name, "--threads", "1",
            "--val-size", "100", "--batch-size", "50", "--epochs", "3", "--model", "mlp",
            "--model-kwarg", "hidden=[32]", "--seed", "3", "--quiet"]


def test_kill_9_at_random_moments_then_resume_or_rerun_equals_uninterrupted(idx_dir, tmp_path):
    ref = subprocess.run([sys.executable, "-m", "trainlab", "train", *_cli_args(idx_dir, tmp_path, "ref")],
                         env=cli_env(), capture_output=True, text=True, timeout=120)
    assert ref.returncode == 0, ref.stderr
    ref_model = load_checkpoint(tmp_path / "ref" / "model.pt")["model"]
    landings = []
    for trial in range(KILL_TRIALS):
        landed, newest_in_place = _kill_trial(idx_dir, tmp_path, trial)
        landings.append(landed)
        run_dir = tmp_path / f"k{trial}"
        # the resume point: the newest save whose file was in place when the kill landed,
        # whatever the manifest had recorded by then (nothing older: at most the work since
        # the previous save is lost)
        found = CheckpointDir(run_dir / "checkpoints").newest_good()
        got_step = found[1]["global_step"] if found else None
        assert got_step == newest_in_place, (trial, landed, got_step, newest_in_place)
        if trial % 2:  # no resume command typed: the same command again continues the run
            assert cli_main(["train", *_cli_args(idx_dir, tmp_path, f"k{trial}")]) == 0, (trial, landed)
        else:
            resume(run_dir, progress=False)
        got = load_checkpoint(run_dir / "model.pt")["model"]
        assert all(torch.equal(got[k], ref_model[k]) for k in ref_model), (trial, landed)
        assert not list((run_dir / "checkpoints").glob(".*.tmp-*"))  # stale temp files cleaned
    in_tmp = sum(x.startswith("tmp-partial") for x in landings)
    pending = sum(x.startswith("pending") for x in landings)
    after_rename = sum(x.startswith("renamed") for x in landings)
    print("kills landed:", landings)
    assert in_tmp >= 2 and pending >= 2 and after_rename >= 2, landings


# ---------------------------------------------------------------- policies

def test_early_stopping_restores_best_and_resumed_run_stops_at_the_same_epoch(idx_dir, tmp_path):
    # min_delta 1.0 on accuracy: no epoch after the first can improve, so patience 2 stops at 3
    kw = dict(model="mlp", monitor="val_acc", patience=2, min_delta=1.0, epochs=8)
    full = train(resolve(config(idx_dir, tmp_path, "es", **kw)), progress=False)
    assert full.results["stopped"] == "early-stop" and len(full.history) == 3
    best = load_checkpoint(tmp_path / "es" / "checkpoints" / "best.pt")
    final = load_checkpoint(tmp_path / "es" / "model.pt")
    assert best["epoch"] == 1
    assert all(torch.equal(final["model"][k], best["model"][k]) for k in best["model"])
    cfg = config(idx_dir, tmp_path, "es2", **kw)
    proc = subprocess.run([sys.executable, str(WORKER), "interrupt", "10", json.dumps(cfg)],
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    again = resume(tmp_path / "es2", progress=False)
    assert len(again.history) == 3 and again.results["stopped"] == "early-stop"


def test_patience_on_a_loss_with_one_cycle_warns_and_accuracy_does_not(idx_dir, tmp_path, caplog):
    kw = dict(model="mlp", schedule="onecycle", patience=3, epochs=1)
    with caplog.at_level(logging.WARNING, logger="trainlab"):
        train(resolve(config(idx_dir, tmp_path, "w1", monitor="val_loss", **kw)), progress=False)
    assert "high-rate phase" in caplog.text and "monitor val_acc" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainlab"):
        train(resolve(config(idx_dir, tmp_path, "w2", monitor="val_acc", **kw)), progress=False)
    assert "high-rate phase" not in caplog.text


def test_fork_with_reset_optimizer_records_parent_and_starts_fresh_state(idx_dir, tmp_path):
    train(resolve(config(idx_dir, tmp_path, "base", model="mlp", epochs=2)), progress=False)
    fork = resume(tmp_path / "base", epochs=4, into=tmp_path / "fork", reset_optimizer=True, progress=False)
    meta = json.loads((tmp_path / "fork" / "meta.json").read_text())
    assert meta["parent"]["epoch"] == 2 and meta["parent"]["reset_optimizer"] is True
    steps = [int(s["step"]) for s in load_checkpoint(tmp_path / "fork" / "checkpoints" / "last.pt")
             ["optimizer"]["state"].values()]
    assert set(steps) == {2 * 10}  # two epochs of fresh Adam state, not four
    assert [r["epoch"] for r in fork.history] == [1, 2, 3, 4]
    assert (tmp_path / "base" / "checkpoints" / "last.pt").exists()  # the parent is untouched


def test_extending_epochs_past_the_schedule_continues_at_the_final_rate(idx_dir, tmp_path):
    train(resolve(config(idx_dir, tmp_path, "ext", model="mlp", epochs=2)), progress=False)
    more = resume(tmp_path / "ext", epochs=4, progress=False)
    lrs = [r["lr"] for r in more.history]
    assert len(lrs) == 4 and lrs[2] == lrs[3] == pytest.approx(lrs[1])


def test_resume_refuses_changed_data_unless_allowed(idx_dir, tmp_path):
    train(resolve(config(idx_dir, tmp_path, "fp", model="mlp", epochs=1)), progress=False)
    from trainlab.data import from_arrays

    tx, ty = make_images(600, seed=9)
    sx, sy = make_images(200, seed=2)
    other = from_arrays(tx, ty, sx, sy, name=f"idx:{idx_dir}")
    with pytest.raises(ConfigError, match="data differs"):
        resume(tmp_path / "fp", epochs=2, data=other, progress=False)
    assert resume(tmp_path / "fp", epochs=2, data=other, allow_changes=True, progress=False).history


def test_resume_refuses_a_changed_recipe_and_warns_about_threads(idx_dir, tmp_path, caplog):
    train(resolve(config(idx_dir, tmp_path, "rc", model="mlp", epochs=1)), progress=False)
    with pytest.raises(ConfigError, match="lr"):
        resume(tmp_path / "rc", epochs=2, overrides={"lr": 0.5}, progress=False)
    with caplog.at_level(logging.WARNING, logger="trainlab"):
        resume(tmp_path / "rc", epochs=2, overrides={"threads": 2}, progress=False)
    assert "not be bitwise equal" in caplog.text


def test_mixed_precision_16_resumes_exactly_on_cpu(idx_dir, tmp_path):
    kw = dict(model="mlp", precision="16-mixed", epochs=2)
    full = train(resolve(config(idx_dir, tmp_path, "h", **kw)), progress=False)
    ck = load_checkpoint(tmp_path / "h" / "checkpoints" / "last.pt")
    assert ck["scaler"]["scale"] > 0 and ck["precision"] == "16-mixed"
    cfg = config(idx_dir, tmp_path, "h2", **kw)
    proc = subprocess.run([sys.executable, str(WORKER), "interrupt", "13", json.dumps(cfg)],
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    resume(tmp_path / "h2", progress=False)
    assert_same_run(full.run_dir, tmp_path / "h2")


def test_precision_change_on_resume_is_explicit(idx_dir, tmp_path, caplog):
    train(resolve(config(idx_dir, tmp_path, "p", model="mlp", epochs=1)), progress=False)
    with pytest.raises(ConfigError, match="precision"):
        resume(tmp_path / "p", epochs=2, overrides={"precision": "16-mixed"}, progress=False)
    with caplog.at_level(logging.WARNING, logger="trainlab"):
        resume(tmp_path / "p", epochs=2, overrides={"precision": "16-mixed"}, allow_changes=True,
               progress=False)
    assert "loss scaler starts fresh" in caplog.text


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(idx_dir, tmp_path):
    from trainlab.training.loop import NonFiniteLoss

    cfg = config(idx_dir, tmp_path, "nan", model="mlp", optimizer="sgd", lr=10.0, recipe="textbook",
                 momentum=0.0, epochs=3)
    with pytest.raises(NonFiniteLoss, match=r"epoch \d+, step \d+"):
        train(resolve(cfg), progress=False)
