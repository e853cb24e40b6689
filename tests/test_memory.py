"""Out of memory inside torch: one sentence naming what to lower, exit 1, and no half-made run
folder left to block the same command (training.memory)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
import torch
from conftest import cli_command, cli_env, run_cli, tiny_dataset, train_tiny, write_idx_folder

from trainlab.errors import TrainlabError
from trainlab.training.memory import is_out_of_memory

OOM_ERRORS = {
    "cuda": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    "cpu-allocator": RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                                  "allocate memory: you tried to allocate 1073741824 bytes. Error code 12"),
    "cpu-not-enough": RuntimeError("not enough memory: you tried to allocate 123456789 bytes."),
    "python": MemoryError(),
}


def test_the_three_ways_torch_runs_out_of_memory_are_recognized():
    assert all(is_out_of_memory(e) for e in OOM_ERRORS.values())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not torch's


def test_an_error_raised_while_handling_an_oom_is_one_too():
    """torch.save into memory: the MemoryError of the buffer, then its zip writer's own
    RuntimeError on the way out (seen under RLIMIT_AS while best.pt was being written)."""
    try:
        try:
            raise MemoryError()
        except MemoryError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 9152 vs 9046")
    except RuntimeError as e:
        assert is_out_of_memory(e)


@pytest.mark.parametrize("kind", sorted(OOM_ERRORS))
def test_oom_in_the_first_epoch_says_what_to_lower_and_removes_the_unstarted_folder(tmp_path, monkeypatch, kind):
    from trainlab.training import loop

    real = loop.fit

    def fails(*a, **kw):
        raise OOM_ERRORS[kind]

    monkeypatch.setattr("trainlab.training.session.fit", fails)
    with pytest.raises(TrainlabError) as e:
        train_tiny(tmp_path, tiny_dataset(n_train=200, n_test=50), name="r", batch_size=64)
    msg = str(e.value)
    assert msg.startswith("out of memory while training mlp at batch size 64: lower --batch-size (e.g. 32)")
    assert "its run folder was removed" in msg and "\n" not in msg
    assert not (tmp_path / "r").exists()
    monkeypatch.setattr("trainlab.training.session.fit", real)
    assert train_tiny(tmp_path, tiny_dataset(n_train=200, n_test=50), name="r", batch_size=64, epochs=1).results


def test_oom_after_a_checkpoint_keeps_the_folder(tmp_path, monkeypatch):
    first = train_tiny(tmp_path, tiny_dataset(n_train=200, n_test=50), name="r", epochs=1)

    def fails(*a, **kw):
        raise OOM_ERRORS["cuda"]

    monkeypatch.setattr("trainlab.training.session.fit", fails)
    from trainlab.api import resume

    with pytest.raises(TrainlabError, match="out of memory while resuming mlp at batch size 32: .*checkpoints are intact"):
        resume(first.run_dir, epochs=2, data=tiny_dataset(n_train=200, n_test=50), progress=False)
    assert (first.run_dir / "checkpoints" / "last.pt").is_file() and (first.run_dir / "model.pt").is_file()


def _address_space_after_import() -> int:
    """The address space a trainlab process maps before it trains (torch's own libraries)."""
    code = ("import trainlab.cli.main, trainlab.training.session, torch; torch.zeros(1) + 1; "
            "print([l for l in open('/proc/self/status') if l.startswith('VmPeak')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120)
    return int(out.stdout.strip()) * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_AS (Linux)")
def test_a_real_oom_under_a_memory_limit_is_one_sentence_and_the_same_command_then_runs(tmp_path):
    """A real allocation failure (RLIMIT_AS: the kernel refuses the memory) with a wide model:
    one sentence, exit 1, no traceback, and no folder left that would refuse the re-run."""
    idx = write_idx_folder(tmp_path / "idx", n_train=400, n_test=100)
    limit = _address_space_after_import() + (400 << 20)  # the 52M-parameter model and Adam need ~830 MB

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    args = ["train", "--dataset", f"idx:{idx}", "--runs-dir", tmp_path / "runs", "--name", "wide", "--threads",
            "1", "--val-size", "100", "--batch-size", "300", "--epochs", "1", "--model", "mlp", "--quiet"]
    r = subprocess.run(cli_command(*args, "--model-kwarg", "hidden=[65536]"), env=cli_env(), capture_output=True,
                       text=True, preexec_fn=cap, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[-1].startswith("trainlab: error: out of memory while training mlp at batch size 300: lower "
                                "--batch-size (e.g. 150), the model's width"), r.stderr
    assert not [x for x in lines if "internal error" in x]
    assert not (tmp_path / "runs" / "wide").exists()
    again = run_cli(*args, "--model-kwarg", "hidden=[16]")
    assert again.returncode == 0, again.stderr


def test_out_of_memory_outside_training_is_one_sentence_not_an_internal_error(monkeypatch, capsys):
    """evaluate / predict running out of memory inside torch reached the RuntimeError branch of
    the CLI: 'internal error ... (a bug in trainlab)'."""
    import importlib

    cli_main = importlib.import_module("trainlab.cli.main")
    files = importlib.import_module("trainlab.cli.files")

    def boom(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 123456789 bytes.")
    monkeypatch.setattr(files, "cmd_inspect", boom)
    code = cli_main.main(["inspect", "whatever"])
    err = capsys.readouterr().err
    assert code == 1 and "out of memory: use a smaller batch size" in err and "internal error" not in err
