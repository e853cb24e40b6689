"""Data-parallel training on torch.distributed (gloo, 2 CPU processes via torchrun)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env, run_cli, start_cli, write_idx_folder

from trainlab.store.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    # 101 test images (odd): ranks evaluate unequal shards, the sums stay exact
    return write_idx_folder(tmp_path_factory.mktemp("idx"), n_train=440, n_test=101)


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
    two = run_cli(*common(idx_dir, tmp_path, "two", *SGD, "--batch-size", "40"), nproc=2)
    assert two.returncode == 0, two.stderr[-2000:]
    one = run_cli(*common(idx_dir, tmp_path, "one", *SGD, "--batch-size", "40"))
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


def test_torchrun_restarts_with_a_shared_store_are_warned_and_the_launcher_opts_out(monkeypatch, capsys):
    from trainlab.training import distributed

    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    monkeypatch.setenv("RANK", "0")
    distributed.warn_shared_store()
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in capsys.readouterr().err
    for env, value in (("TORCHELASTIC_MAX_RESTARTS", "0"), ("TORCHELASTIC_USE_AGENT_STORE", "False"), ("RANK", "1")):
        with monkeypatch.context() as m:
            m.setenv(env, value)
            distributed.warn_shared_store()
            assert capsys.readouterr().err == ""
    seen = {}
    monkeypatch.setattr(distributed.subprocess, "call", lambda cmd, env: seen.update(cmd=cmd, env=env) or 0)
    assert distributed.launch(2, ["train"], max_restarts=1) == 0
    assert seen["env"]["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1" and "--max-restarts=1" in seen["cmd"]
