"""The run folder: one process owns it at a time (an OS lock that dies with its process),
and two trainlab processes on one run never destroy each other's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SRC, cli_env, run_cli, start_cli, write_idx_folder

from trainlab.errors import StoreError
from trainlab.store.checkpoint import CheckpointDir, load_checkpoint
from trainlab.store.runs import RunLock, read_metrics


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    return write_idx_folder(tmp_path_factory.mktemp("idx"), n_train=400, n_test=100)


def train_args(idx_dir, runs, name, epochs=3):
    return ["train", "--dataset", f"idx:{idx_dir}", "--runs-dir", str(runs), "--name", name, "--threads", "1",
            "--val-size", "100", "--batch-size", "50", "--epochs", str(epochs), "--model", "mlp",
            "--model-kwarg", "hidden=[16]", "--quiet"]


def start_slow(idx_dir, runs, name, *args):
    """A training process slowed at every write (0.3 s), so another can meet it mid-run."""
    proc = start_cli(*(args or train_args(idx_dir, runs, name, epochs=4)),
                     env=cli_env(TRAINLAB_TEST_WRITE_DELAY="0.3"), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    lock = runs / name / ".lock"
    deadline = time.time() + 60
    # the lock file may hold an earlier process's PID: wait until this one owns it
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip() == str(proc.pid)):
        time.sleep(0.02)
    assert lock.read_text().strip() == str(proc.pid), proc.communicate()[1]
    return proc


def assert_every_checkpoint_verifies(run_dir: Path):
    folder = CheckpointDir(run_dir / "checkpoints")
    names = folder.files_here()
    assert names and all(folder.verify(n) is None for n in names), {n: folder.verify(n) for n in names}
    for n in names:
        load_checkpoint(folder.folder / n)


def test_a_second_lock_on_a_run_is_refused_naming_the_holder(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(StoreError, match=rf"in use by another trainlab process \(PID {os.getpid()}\)"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: free again
        pass


def test_a_symlinked_lock_file_is_refused_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(StoreError):
        RunLock(run).acquire()
    assert victim.read_text() == "precious"


def test_the_lock_dies_with_its_process_even_under_kill_9(tmp_path):
    code = f"import sys, time; sys.path.insert(0, {str(SRC)!r}); from trainlab.store.runs import RunLock; " \
           f"RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(StoreError, match=f"PID {proc.pid}"):
        RunLock(tmp_path).acquire()
    proc.kill()
    proc.wait()
    with RunLock(tmp_path):
        pass


def test_two_resumes_of_one_run_one_wins_the_other_is_refused(idx_dir, tmp_path):
    first = run_cli(*train_args(idx_dir, tmp_path, "r", epochs=1))
    assert first.returncode == 0, first.stderr
    a = start_slow(idx_dir, tmp_path, "r", "resume", str(tmp_path / "r"), "--epochs", "3")
    b = run_cli("resume", str(tmp_path / "r"), "--epochs", "3")
    assert b.returncode == 1
    assert b.stderr.strip().splitlines() == [
        f"trainlab: error: {tmp_path / 'r'} is in use by another trainlab process (PID {a.pid}); "
        "wait for it to finish or stop it, then try again"]
    out, err = a.communicate(timeout=180)
    assert a.returncode == 0, err
    assert_every_checkpoint_verifies(tmp_path / "r")
    rows = [r for r in read_metrics(tmp_path / "r") if "epoch" in r and "event" not in r]
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # no row duplicated or lost


def test_train_and_resume_together_never_restart_the_run(idx_dir, tmp_path):
    a = start_slow(idx_dir, tmp_path, "t")
    b = run_cli("resume", str(tmp_path / "t"))
    assert b.returncode == 1 and f"PID {a.pid}" in b.stderr and "Traceback" not in b.stderr
    _, err = a.communicate(timeout=180)
    assert a.returncode == 0, err
    rows = read_metrics(tmp_path / "t")
    assert not [r for r in rows if r.get("event") in ("restart", "resume")]
    assert [r["epoch"] for r in rows if "epoch" in r] == [1, 2, 3, 4]
    assert_every_checkpoint_verifies(tmp_path / "t")


def test_evaluate_during_a_resume_is_refused_and_after_it_works(idx_dir, tmp_path):
    first = run_cli(*train_args(idx_dir, tmp_path, "e", epochs=1))
    assert first.returncode == 0, first.stderr
    a = start_slow(idx_dir, tmp_path, "e", "resume", str(tmp_path / "e"), "--epochs", "3")
    b = run_cli("evaluate", str(tmp_path / "e"), "--no-plots")
    assert b.returncode == 1 and f"in use by another trainlab process (PID {a.pid})" in b.stderr
    _, err = a.communicate(timeout=180)
    assert a.returncode == 0, err
    c = run_cli("evaluate", str(tmp_path / "e"), "--no-plots")
    assert c.returncode == 0, c.stderr
    assert json.loads((tmp_path / "e" / "evaluation.json").read_text())["epoch"] == 3
    assert_every_checkpoint_verifies(tmp_path / "e")
