"""The run folder: one process owns it at a time (an OS lock that dies with its process),
and two trainlab processes on one run never destroy each other's files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SRC, idx_folder, run_cli, start_cli, wait_until

from trainlab.errors import StoreError, TrainlabError
from trainlab.store.manifest import CheckpointDir
from trainlab.store.schema import load_checkpoint
from trainlab.store.runs import RunLock, read_metrics


idx_dir = idx_folder(400, 100)


def train_args(idx_dir, runs, name, epochs=3):
    return ["train", "--dataset", f"idx:{idx_dir}", "--runs-dir", str(runs), "--name", name, "--threads", "1",
            "--val-size", "100", "--batch-size", "50", "--epochs", str(epochs), "--model", "mlp",
            "--model-kwarg", "hidden=[16]", "--quiet"]


def start_slow(idx_dir, runs, name, *args):
    """A training process slowed at every write (0.3 s), so another can meet it mid-run."""
    proc = start_cli(*(args or train_args(idx_dir, runs, name, epochs=4)), faults=dict(delay=0.3),
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = runs / name / ".lock"
    # the lock file may hold an earlier process's PID: wait until this one owns it
    owned = wait_until(lambda: lock.exists() and lock.read_text().strip() == str(proc.pid), timeout=60)
    assert owned, proc.communicate()[1]
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


# ---------------------------------------------------------------- hostile run records

@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished 2-epoch run folder, copied by each test that damages it."""
    from conftest import tiny_dataset, train_tiny

    return train_tiny(tmp_path_factory.mktemp("runs"), tiny_dataset(n_train=300, n_test=100), name="done").run_dir


def _row(epoch) -> str:
    return json.dumps({"epoch": epoch, "global_step": 10, "lr": 0.01, "train_loss": 0.5, "train_acc": 0.8,
                       "val_loss": 0.6, "val_acc": 0.7, "test_loss": 0.6, "test_acc": 0.7, "seconds": 1.0,
                       "train_seconds": 0.9}) + "\n"


def _write_400k_rows(path: Path) -> None:
    with open(path, "w") as f:
        row = _row(1)
        for _ in range(40):
            f.write(row * 10_000)


HOSTILE_METRICS = {
    "400k-rows": (_write_400k_rows, "bytes, more than 2 epochs"),
    "many-small-rows": (lambda p: p.write_text('{"epoch": 1}\n' * 1500), "rows"),
    "string-epoch": (lambda p: p.write_text(_row(1) + _row("2")), 'line 2: epoch "2" is not a whole number'),
    "negative-epoch": (lambda p: p.write_text(_row(-1)), "epoch -1 is not a whole number"),
    "bool-epoch": (lambda p: p.write_text(_row(True)), "epoch true is not a whole number"),
    "string-metric": (lambda p: p.write_text(_row(1).replace('"train_acc": 0.8', '"train_acc": "x"')),
                      'train_acc "x" is not a number'),
    "nan": (lambda p: p.write_text(_row(1).replace("0.5", "NaN")), "NaN where a number or null belongs"),
    "infinity": (lambda p: p.write_text(_row(1).replace("0.5", "-Infinity")), "-Infinity where"),
    "huge-line": (lambda p: p.write_text('{"epoch": 1, "x": "' + "a" * (1 << 20) + '"}\n'), "a line over"),
    "non-utf8": (lambda p: p.write_bytes(_row(1).encode() + b'{"epoch": 2, "x": "\xff\xfe"}\n'),
                 "line 2: bytes that are not UTF-8"),
    "not-json": (lambda p: p.write_text("epoch 1\n" + _row(2)), "line 1: not JSON"),
    "a-list": (lambda p: p.write_text("[1, 2]\n"), "not a JSON object"),
    "deep": (lambda p: p.write_text("[" * 10_000 + "]" * 10_000 + "\n"), "line 1"),
    "event-epoch": (lambda p: p.write_text('{"event": "resume", "epoch": "x"}\n'), 'epoch "x"'),
}


def _damaged(finished: Path, tmp_path: Path, case: str) -> Path:
    run = tmp_path / case
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns(".lock"))
    HOSTILE_METRICS[case][0](run / "metrics.jsonl")
    return run


@pytest.mark.parametrize("case", sorted(HOSTILE_METRICS))
def test_hostile_metrics_end_in_one_sentence_naming_the_file(finished, tmp_path, case):
    run = _damaged(finished, tmp_path, case)
    with pytest.raises(TrainlabError) as e:
        read_metrics(run)
    msg = str(e.value)
    assert msg.startswith(f"{run / 'metrics.jsonl'} is not a metrics log trainlab writes"), msg
    assert HOSTILE_METRICS[case][1] in msg and "move it aside" in msg and "\n" not in msg


def test_a_torn_last_line_is_left_out_and_the_rows_before_it_stand(finished, tmp_path):
    run = tmp_path / "torn"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns(".lock"))
    whole = (run / "metrics.jsonl").read_bytes()
    (run / "metrics.jsonl").write_bytes(whole + b'{"epoch": 3, "train_lo')  # killed mid-write
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]


def test_trainlab_never_writes_a_row_its_reader_refuses(tmp_path):
    from trainlab.store.runs import append_metrics

    append_metrics(tmp_path, {"epoch": 1, "train_loss": float("nan"), "val_loss": float("inf")})
    assert read_metrics(tmp_path) == [{"epoch": 1, "train_loss": None, "val_loss": None}]


@pytest.mark.parametrize("command", ["compare", "report"])
@pytest.mark.parametrize("case", ["400k-rows", "string-epoch", "nan", "huge-line", "non-utf8"])
def test_hostile_metrics_through_the_commands(finished, tmp_path, command, case):
    """Each reader of metrics.jsonl, as a command: one sentence, exit 1, no traceback, in a
    process whose address space is capped (a reader that loaded 400,000 rows would fail)."""
    import resource

    run = _damaged(finished, tmp_path, case)
    args = {"compare": [run], "report": [run, "-o", tmp_path / "r.html"]}[command]
    limit = 3 << 30  # torch itself maps ~1.5 GB of address space

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    r = run_cli(command, *args, preexec_fn=cap)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith("trainlab: error: ") and "metrics.jsonl" in lines[0], r.stderr
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("text", ["[1]", '{"epochs": "3"}', '{"stopped": 5}', '{"epochs": NaN}'])
def test_a_damaged_results_json_is_named_when_the_same_command_runs_again(idx_dir, tmp_path, text):
    """The re-run decision reads results.json (is the run finished?): a damaged one is one
    sentence naming it, not an internal error."""
    assert run_cli(*train_args(idx_dir, tmp_path, "r", epochs=1)).returncode == 0
    (tmp_path / "r" / "results.json").write_text(text)
    r = run_cli(*train_args(idx_dir, tmp_path, "r", epochs=1))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[-1].startswith(f"trainlab: error: {tmp_path / 'r' / 'results.json'} is not "), r.stderr
    assert len([x for x in lines if x.startswith("trainlab: error")]) == 1
