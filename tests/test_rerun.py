"""Runs that finish by themselves (trainlab.training.rerun): the same command run again
continues a named run, a finished one trains nothing, a changed config is refused, --restart
keeps the old folder aside; under torchrun a killed rank is restarted and the run completes
with the uninterrupted run's weights; two nodes give what one node with two processes gives."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, child_pids, cli_env, idx_folder, run_cli, start_cli

import trainlab
from trainlab.store.schema import load_checkpoint


idx_dir = idx_folder(2000, 200)


def args(idx_dir, runs, name, *extra):
    return ["train", "--dataset", f"idx:{idx_dir}", "--runs-dir", str(runs), "--name", name, "--model", "mlp",
            "--model-kwarg", "hidden=[64]", "--epochs", "4", "--val-size", "200", "--batch-size", "50",
            "--threads", "1", "--precision", "32", "--quiet", *extra]


def weights(run: Path) -> dict:
    return load_checkpoint(run / "model.pt")["model"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def snapshot(run: Path) -> dict:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def epoch_rows(run: Path) -> list[dict]:
    text = (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else ""
    return [json.loads(x) for x in text.splitlines() if x.strip() and '"event"' not in x]


def test_a_finished_run_run_again_trains_nothing(idx_dir, tmp_path, cli, caplog):
    assert cli(*args(idx_dir, tmp_path, "r")).returncode == 0
    before = snapshot(tmp_path / "r")
    again = cli(*args(idx_dir, tmp_path, "r"))
    assert again.returncode == 0 and "is finished (4 epochs): nothing to train" in caplog.text
    assert snapshot(tmp_path / "r") == before  # not one byte written


def test_a_killed_run_run_again_continues_to_the_uninterrupted_weights(idx_dir, tmp_path):
    assert run_cli(*args(idx_dir, tmp_path, "straight")).returncode == 0
    run = tmp_path / "killed"
    proc = start_cli(*args(idx_dir, tmp_path, "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(epoch_rows(run)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill: nothing was tested"
    again = run_cli(*args(idx_dir, tmp_path, "killed"))  # the same command, no resume typed
    assert again.returncode == 0, again.stderr
    assert "already holds this run: continuing it" in again.stderr
    assert same(weights(run), weights(tmp_path / "straight"))
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert events and events[-1]["event"] == "resume" and events[-1]["by"] == "rerun"


def test_a_changed_config_is_refused_by_name_and_nothing_changes(idx_dir, tmp_path, cli):
    assert cli(*args(idx_dir, tmp_path, "r", "--epochs", "1")).returncode == 0
    before = snapshot(tmp_path / "r")
    changed = cli(*args(idx_dir, tmp_path, "r", "--epochs", "1", "--seed", "9", "--lr", "0.5"))
    assert changed.returncode == 2
    err = changed.stderr.strip()
    assert err.count("\n") == 0 and "another config (seed: 0 -> 9; lr: " in err and "--restart" in err
    assert snapshot(tmp_path / "r") == before


def test_restart_keeps_the_old_folder_aside(idx_dir, tmp_path, cli):
    assert cli(*args(idx_dir, tmp_path, "r", "--epochs", "1")).returncode == 0
    old = snapshot(tmp_path / "r")
    assert cli(*args(idx_dir, tmp_path, "r", "--epochs", "1", "--restart")).returncode == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("r-before-restart-")]
    assert len(aside) == 1 and snapshot(aside[0]) == old
    assert (tmp_path / "r" / "model.pt").is_file()


def test_rerun_refuse_keeps_the_old_refusal(idx_dir, tmp_path, cli):
    assert cli(*args(idx_dir, tmp_path, "r", "--epochs", "1")).returncode == 0
    refused = cli(*args(idx_dir, tmp_path, "r", "--epochs", "1", "--rerun", "refuse"))
    assert refused.returncode == 2 and "already exists and is never overwritten" in refused.stderr


def test_a_folder_killed_before_its_run_started_is_started(idx_dir, tmp_path, cli):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".lock").write_text("123\n")  # what a kill right after mkdir + lock leaves
    assert cli(*args(idx_dir, tmp_path, "r", "--epochs", "1")).returncode == 0
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")  # anything else: never touched
    refused = cli(*args(idx_dir, tmp_path, "s", "--epochs", "1"))
    assert refused.returncode == 2 and (tmp_path / "s" / "notes.txt").read_text() == "mine"


def test_the_library_call_run_again_returns_the_finished_result(tmp_path, tiny_data):
    cfg = {**TINY_RUN, "runs_dir": str(tmp_path), "name": "lib"}
    first = trainlab.train(cfg, data=tiny_data, progress=False)
    again = trainlab.train(cfg, data=tiny_data, progress=False)
    assert again.run_dir == first.run_dir and again.test == json.loads(json.dumps(first.test))
    assert [r["epoch"] for r in again.history] == [1, 2]


# ---------------------------------------------------------------- torchrun

def _start_ddp(argv, env, run: Path, epochs: int):
    """A `--nproc 2` run started; returns (launcher, its two workers) once `epochs` epochs are
    written, so that what the test does next happens mid-run."""
    proc = start_cli(*argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while len(epoch_rows(run)) < epochs and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = [w for agent in child_pids(proc.pid) for w in child_pids(agent)]
    assert len(workers) == 2, "the run ended before the test acted: nothing was tested"
    return proc, workers


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


@needs_proc
@pytest.mark.timeout(600)
def test_a_rank_killed_mid_run_under_max_restarts_completes_by_itself(idx_dir, tmp_path):
    # Under load this hung before the launcher gave each round a fresh store (see
    # distributed.FRESH_STORE_ENV): the restarted ranks read their predecessors' addresses.
    env = cli_env(TRAINLAB_DIST_TIMEOUT="120")
    ddp = ("--nproc", "2")
    assert run_cli(*args(idx_dir, tmp_path, "straight", *ddp), env=env, timeout=300).returncode == 0
    run = tmp_path / "elastic"
    proc, workers = _start_ddp(args(idx_dir, tmp_path, "elastic", *ddp, "--max-restarts", "2"), env, run, 2)
    os.kill(workers[-1], signal.SIGKILL)  # one rank dies mid-run
    _, err = proc.communicate(timeout=400)
    trainlab_lines = [x for x in err.splitlines() if x.startswith(("trainlab:", "re-run:", "resume:", "data:"))]
    assert proc.returncode == 0, "\n".join(trainlab_lines[-20:]) + "\n" + err[-1500:]
    assert "continuing it from its newest checkpoint" in err
    assert same(weights(run), weights(tmp_path / "straight"))  # the partial epoch redone, exactly


@needs_proc
def test_a_preempted_launcher_saves_and_the_same_command_finishes_the_run(idx_dir, tmp_path):
    env = cli_env(TRAINLAB_DIST_TIMEOUT="60")
    ddp = ("--nproc", "2")
    assert run_cli(*args(idx_dir, tmp_path, "straight", *ddp), env=env, timeout=300).returncode == 0
    run = tmp_path / "preempted"
    proc = start_cli(*args(idx_dir, tmp_path, "preempted", *ddp), env=env, stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while len(epoch_rows(run)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    agents = child_pids(proc.pid)
    assert agents, "the run ended before the signal: nothing was tested"
    os.kill(agents[0], signal.SIGTERM)  # a preemptible VM's notice reaches torchrun
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "continue with: trainlab resume" in err
    again = run_cli(*args(idx_dir, tmp_path, "preempted", *ddp), env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert same(weights(run), weights(tmp_path / "straight"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_give_what_one_node_with_two_processes_gives(idx_dir, tmp_path):
    # the README's several-node command: a fresh store per round, restarts allowed
    env = cli_env(TRAINLAB_DIST_TIMEOUT="60", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    port = _free_port()
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
         f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=trainlab-test-{port}", "--max-restarts=1", "-m", "trainlab",
         *args(idx_dir, tmp_path, "two-nodes", "--epochs", "2")], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for agent in agents:
        _, err = agent.communicate(timeout=300)
        assert agent.returncode == 0, err[-2000:]
    one = run_cli(*args(idx_dir, tmp_path, "one-node", "--epochs", "2", "--nproc", "2"), env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    assert same(weights(tmp_path / "two-nodes"), weights(tmp_path / "one-node"))
    meta = json.loads((tmp_path / "two-nodes" / "meta.json").read_text())
    assert meta["world_size"] == 2


@needs_proc
def test_a_hung_rank_ends_in_one_sentence_not_an_endless_wait(idx_dir, tmp_path):
    env = cli_env(TRAINLAB_DIST_TIMEOUT="30")  # long enough to start on a busy machine
    run = tmp_path / "hung"
    proc, workers = _start_ddp(args(idx_dir, tmp_path, "hung", "--nproc", "2", "--epochs", "20"), env, run, 1)
    os.kill(workers[-1], signal.SIGSTOP)  # alive but silent: a hang, not a death
    try:
        deadline = time.monotonic() + 120
        while Path(f"/proc/{workers[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the other rank gives up on its own, after TRAINLAB_DIST_TIMEOUT
        assert not Path(f"/proc/{workers[0]}").exists(), "the waiting rank never gave up"
        os.kill(workers[-1], signal.SIGKILL)  # (torchrun would wait 30 s for a stopped process)
        _, err = proc.communicate(timeout=150)
    finally:
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)
    assert proc.returncode != 0
    assert "lost contact with the other training processes" in err and "trainlab resume" in err


def test_the_same_command_with_more_epochs_is_refused_not_silently_extended(tmp_path, tiny_data):
    """A finished 2-epoch run asked again for 4 epochs was extended at the old schedule's final
    rate without a word (config.toml still said 2): now it says how to extend, and resume
    --epochs does it with config.toml updated."""
    from conftest import train_tiny

    from trainlab.api import resume
    from trainlab.config import load_toml
    from trainlab.errors import ConfigError

    first = train_tiny(tmp_path, tiny_data, name="Y", epochs=2)
    with pytest.raises(ConfigError, match=r"planned for 2 epochs, and this command asks for 4: .*resume .* "
                                          r"--epochs 4"):
        train_tiny(tmp_path, tiny_data, name="Y", epochs=4)
    assert load_toml(first.run_dir / "config.toml")["epochs"] == 2
    again = train_tiny(tmp_path, tiny_data, name="Y", epochs=2)  # the same command: finished, reported
    assert len(again.history) == 2
    resume(first.run_dir, epochs=3, data=tiny_data, progress=False)
    assert load_toml(first.run_dir / "config.toml")["epochs"] == 3
    assert train_tiny(tmp_path, tiny_data, name="Y", epochs=3).results["epochs"] == 3  # finished at 3


def test_test_every_epoch_is_free_old_folders_compare_equal_and_resume_may_turn_it_on(tmp_path, tiny_data):
    """A run folder from before the key existed (config.toml without it) is the same run on a re-run;
    the key changes no number, so a re-run or a resume may set it."""
    from conftest import train_tiny

    from trainlab.api import resume
    from trainlab.config import load_toml, resolve

    assert resolve({}).test_every_epoch is None and "test_every_epoch" not in resolve({}).to_dict()
    first = train_tiny(tmp_path, tiny_data, name="old", epochs=2)
    assert "test_every_epoch" not in load_toml(first.run_dir / "config.toml")  # as an older trainlab wrote it
    again = train_tiny(tmp_path, tiny_data, name="old", epochs=2, test_every_epoch=True)  # finished: reported
    assert len(again.history) == 2
    resume(first.run_dir, epochs=3, data=tiny_data, progress=False, overrides={"test_every_epoch": True})
    rows = epoch_rows(first.run_dir)
    assert [("test_acc" in r, r.get("test_note")) for r in rows] == [(False, None), (False, None),
                                                                      (True, "not for selection")]
