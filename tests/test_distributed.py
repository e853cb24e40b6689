"""Data-parallel training on torch.distributed (gloo, 2 CPU processes via torchrun)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    child_pids,
    cli_env,
    descendant_pids,
    idx_folder,
    is_alive,
    run_cli,
    start_cli,
    wait_for_epochs,
)

from trainlab.store.schema import load_checkpoint


idx_dir = idx_folder(440, 101)  # 101 test images (odd): ranks evaluate unequal shards, the sums stay exact


def common(idx_dir, tmp_path, name, *extra):
    return ["train", "--dataset", f"idx:{idx_dir}", "--runs-dir", str(tmp_path), "--name", name,
            "--threads", "1", "--val-size", "40", "--quiet", "--seed", "5", *extra]


SGD = ["--model", "mlp", "--recipe", "textbook", "--optimizer", "sgd", "--lr", "0.05",
       "--momentum", "0.9", "--epochs", "1", "--precision", "32"]


def weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_ranks_match_one_process_with_the_same_global_batch(idx_dir, tmp_path):
    """400 samples / global batch 40 = 10 SGD-momentum steps: 2 ranks x 20 == 1 x 40."""
    # --test-every-epoch: the per-epoch test sums are all-reduced too (checked below)
    two = run_cli(*common(idx_dir, tmp_path, "two", *SGD, "--batch-size", "40", "--test-every-epoch"), nproc=2)
    assert two.returncode == 0, two.stderr[-2000:]
    one = run_cli(*common(idx_dir, tmp_path, "one", *SGD, "--batch-size", "40", "--test-every-epoch"))
    assert one.returncode == 0, one.stderr[-2000:]
    half = run_cli(*common(idx_dir, tmp_path, "half", *SGD, "--batch-size", "20"))
    assert half.returncode == 0, half.stderr[-2000:]
    w2, w1, wh = weights(tmp_path / "two"), weights(tmp_path / "one"), weights(tmp_path / "half")
    assert load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["global_step"] == 10
    assert max_diff(w2, w1) < 1e-6
    assert max_diff(wh, w1) > 1e-3  # negative control: 1 process x batch 20 is another run
    m2 = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["history"][-1]
    m1 = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")["history"][-1]
    for key in ("train_loss", "val_loss", "val_acc", "test_loss", "test_acc"):  # all-reduced
        assert m2[key] == pytest.approx(m1[key], abs=1e-5), key


@pytest.mark.parametrize("first,second", [(2, 1), (1, 2)])
def test_resume_with_another_world_size(idx_dir, tmp_path, first, second):
    args = common(idx_dir, tmp_path, "r", "--model", "mlp-reg", "--epochs", "1", "--batch-size", "40")
    proc = run_cli(*args, nproc=first)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("resume", tmp_path / "r", "--epochs", "2", nproc=second)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert ck["epoch"] == 2 and ck["world_size"] == second
    assert f"world size {first} -> {second}" in proc.stderr, proc.stderr[-3000:]


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
BOUND_S = 60  # torchrun notices a dead worker within a second and stops the others


def test_a_killed_rank_ends_the_job_in_bounded_time_and_resume_works(idx_dir, tmp_path):
    args = common(idx_dir, tmp_path, "k", "--model", "mlp", "--epochs", "500", "--batch-size", "8")
    # the collectives' own timeout (TRAINLAB_DIST_TIMEOUT) far above the bound: the job must
    # end because a rank died, not because the survivor waited out its timeout
    proc = start_cli(*args, nproc=2, env=cli_env(TRAINLAB_DIST_TIMEOUT="600"), stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ckpt = tmp_path / "k" / "checkpoints" / "last.pt"
        deadline = time.time() + 90
        while not ckpt.exists() and time.time() < deadline:
            time.sleep(0.1)
        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(children) == 2
        os.kill(children[-1], signal.SIGKILL)  # one rank dies
        t0 = time.time()
        _, err = proc.communicate(timeout=BOUND_S)
        elapsed = time.time() - t0
    except subprocess.TimeoutExpired:
        pytest.fail(f"the job was still running {BOUND_S} s after one of its ranks died")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"the job ended {elapsed:.1f} s after a rank was killed")
    assert proc.returncode != 0, err[-2000:]
    proc = run_cli("resume", tmp_path / "k", "--epochs", load_checkpoint(ckpt)["epoch"] + 1)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_sync_bn_on_cpu_is_refused_clearly(idx_dir, tmp_path):
    proc = run_cli(*common(idx_dir, tmp_path, "s", "--model", "mlp-reg", "--sync-bn"))
    assert proc.returncode == 2 and "sync_bn needs DDP on CUDA" in proc.stderr


def test_a_join_that_never_returns_ends_the_process_in_one_sentence(tmp_path):
    # gloo's listening side of a connect has no timeout: the watchdog is what bounds a join
    code = ("import time\nfrom trainlab.training import distributed\n"
            "with distributed._watchdog(0.5):\n    time.sleep(60)\n")
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, env=cli_env())
    assert r.returncode == 1 and time.monotonic() - t < 40
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "could not connect the training processes within 0.5 s" in r.stderr and "TRAINLAB_DIST_TIMEOUT" in r.stderr
    # a join that returns leaves nothing behind
    ok = subprocess.run([sys.executable, "-c", "import time\nfrom trainlab.training import distributed\n"
                         "with distributed._watchdog(0.5):\n    pass\ntime.sleep(1.5)\nprint('alive')"],
                        capture_output=True, text=True, timeout=50, env=cli_env())
    assert ok.returncode == 0 and ok.stdout.strip() == "alive"


def test_only_several_nodes_sharing_a_store_across_restarts_are_warned(monkeypatch, capsys):
    from trainlab.training import distributed

    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    distributed.warn_shared_store()
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in capsys.readouterr().err
    for env, value in (("TORCHELASTIC_MAX_RESTARTS", "0"), ("TORCHELASTIC_USE_AGENT_STORE", "False"),
                       ("RANK", "1"), ("GROUP_WORLD_SIZE", "1")):  # one node: each round has its prefix
        with monkeypatch.context() as m:
            m.setenv(env, value)
            distributed.warn_shared_store()
            assert capsys.readouterr().err == ""
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "3")  # several nodes count their restarts apart
    assert distributed.round_prefix() == "trainlab/round-0"
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")  # one agent: every rank has its count
    assert distributed.round_prefix() == "trainlab/round-3"
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # a fresh store each round
    assert distributed.round_prefix() == "trainlab/round-0"


# ---------------------------------------------------------------- the --nproc launcher

LONG = ["--model", "mlp", "--epochs", "500", "--batch-size", "8"]  # never ends by itself here


def trainlab_lines(err: str) -> list[str]:
    """The lines that report how the command ended (not the launch line or progress)."""
    return [x for x in err.splitlines() if x.startswith(("trainlab: error", "trainlab: internal", "trainlab: interrupted"))]


def start_launcher(idx_dir, tmp_path, name, *extra):
    """`trainlab train --nproc 2 ...` started in its own session, once an epoch is written:
    returns (launcher, every process below it)."""
    proc = start_cli(*common(idx_dir, tmp_path, name, *LONG, "--nproc", "2", *extra),
                     env=cli_env(TRAINLAB_DIST_TIMEOUT="120"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                     text=True, start_new_session=True)
    wait_for_epochs(proc, tmp_path / name, 1)
    below = descendant_pids(proc.pid)
    assert proc.poll() is None and len(below) == 3, "the run ended before the test acted: nothing was tested"
    return proc, below


def wait_gone(pids: list[int], bound: float) -> list[int]:
    deadline = time.monotonic() + bound
    while any(is_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if is_alive(p)]


def kill_all(pids):
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


@needs_proc
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_launcher_saves_stops_every_process_and_resume_continues(idx_dir, tmp_path, signum):
    proc, below = start_launcher(idx_dir, tmp_path, "t")
    try:
        os.kill(proc.pid, signum)  # what kill, timeout and supervisors send (SIGHUP: a closed terminal)
        _, err = proc.communicate(timeout=BOUND_S * 2)
        left = wait_gone(below, BOUND_S)
    finally:
        kill_all([proc.pid, *below])
    assert not left, f"processes left running after the launcher ended: {left}"
    assert proc.returncode == 128 + signum, err[-2000:]
    lines = trainlab_lines(err)
    assert len(lines) == 1 and "continue with: trainlab resume" in lines[0], err[-2000:]
    assert "Traceback" not in err and "ChildFailedError" not in err
    epoch = load_checkpoint(tmp_path / "t" / "checkpoints" / "last.pt")["epoch"]
    again = run_cli("resume", tmp_path / "t", "--epochs", epoch + 1)  # the run is not 'in use'
    assert again.returncode == 0, again.stderr[-2000:]
    assert load_checkpoint(tmp_path / "t" / "checkpoints" / "last.pt")["epoch"] == epoch + 1


@needs_proc
def test_a_launcher_killed_by_sigkill_leaves_no_rank_running(idx_dir, tmp_path):
    proc, below = start_launcher(idx_dir, tmp_path, "k9")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        left = wait_gone(below, BOUND_S)
    finally:
        kill_all(below)
    assert not left, f"torchrun and its ranks outlived the launcher: {left}"
    again = run_cli("resume", tmp_path / "k9", "--epochs", load_checkpoint(
        tmp_path / "k9" / "checkpoints" / "last.pt")["epoch"] + 1)
    assert again.returncode == 0, again.stderr[-2000:]  # no rank holds the run


@needs_proc
def test_a_plain_torchrun_killed_by_sigkill_leaves_no_rank_running(idx_dir, tmp_path):
    proc = start_cli(*common(idx_dir, tmp_path, "t9", *LONG), nproc=2, env=cli_env(TRAINLAB_DIST_TIMEOUT="120"),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ranks = []
    try:
        wait_for_epochs(proc, tmp_path / "t9", 1)
        ranks = child_pids(proc.pid)
        assert proc.poll() is None and len(ranks) == 2, "the run ended before the kill: nothing was tested"
        proc.kill()
        proc.wait()
        left = wait_gone(ranks, BOUND_S)  # each rank takes its parent's end as a SIGTERM
    finally:
        kill_all(([proc.pid] if proc.poll() is None else []) + ranks)
    assert not left, f"the ranks outlived torchrun: {left}"


@pytest.mark.parametrize("extra,code,says", [
    (["--model", "mlp-reg", "--sync-bn"], 2, "sync_bn needs DDP on CUDA"),  # a usage error found by the ranks
    (["--model", "mlp", "--dataset", "idx:/nonexistent-trainlab-test"], 1, "is not a folder"),
])
def test_an_error_after_the_launch_is_one_line_with_its_own_exit_code(idx_dir, tmp_path, extra, code, says):
    proc = run_cli(*common(idx_dir, tmp_path, "e", "--nproc", "2", *extra), env=cli_env(TRAINLAB_DIST_TIMEOUT="60"))
    lines = trainlab_lines(proc.stderr)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert len(lines) == 1 and says in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr and "exitcode" not in proc.stderr


def test_the_launcher_picks_the_cause_over_a_rank_that_lost_its_peer(tmp_path):
    from trainlab.cli import launch as launcher

    def leave(rnd, rank, line, code, secondary=False):
        (tmp_path / f"round-{rnd}-rank-{rank}.json").write_text(json.dumps(
            {"line": line, "code": code, "round": rnd, "rank": rank, "secondary": secondary}))

    leave(0, 0, "trainlab: error: lost contact", 1, secondary=True)
    leave(0, 1, "trainlab: error: disk full", 1)
    assert launcher.read_errors(tmp_path)["line"] == "trainlab: error: disk full"
    leave(1, 1, "trainlab: error: SIGTERM: rank 1 stopped", 143)
    leave(1, 0, "trainlab: error: SIGTERM: stopped; continue with: trainlab resume r", 143)  # the newest round
    assert launcher.read_errors(tmp_path)["line"].endswith("trainlab resume r")
    (tmp_path / "round-2-rank-0.json").write_bytes(b"\xff{not json")  # a damaged file is skipped
    (tmp_path / "round-3-rank-0.json").write_text(json.dumps({"line": 7, "code": "x", "round": 3, "rank": 0}))
    assert launcher.read_errors(tmp_path)["round"] == 1


# ---------------------------------------------------------------- plain torchrun

@needs_proc
@pytest.mark.timeout(600)
def test_plain_torchrun_restarts_a_killed_rank_and_ends_with_the_uninterrupted_weights(idx_dir, tmp_path):
    """No trainlab launcher, no environment variable: torchrun's store is shared across its
    restart rounds, and each round joins under its own prefix."""
    env = cli_env(TRAINLAB_DIST_TIMEOUT="60")
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)
    args = common(idx_dir, tmp_path, "straight", "--model", "mlp", "--epochs", "3", "--batch-size", "8")
    straight = run_cli(*args, nproc=2, env=env, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    args = common(idx_dir, tmp_path, "elastic", "--model", "mlp", "--epochs", "3", "--batch-size", "8")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "--max-restarts", "2", "-m", "trainlab", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_epochs(proc, tmp_path / "elastic", 1)
        ranks = child_pids(proc.pid)
        assert proc.poll() is None and len(ranks) == 2, "the run ended before the kill: nothing was tested"
        os.kill(ranks[-1], signal.SIGKILL)  # one rank dies mid-run
        _, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            kill_all([proc.pid, *descendant_pids(proc.pid)])
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "continuing it from its newest checkpoint" in err
    a = load_checkpoint(tmp_path / "elastic" / "model.pt")["model"]
    b = load_checkpoint(tmp_path / "straight" / "model.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
