"""Sweeps on Optuna (trainlab.analysis.sweep): the space file's checks, trials as run folders,
kill -9 and the same command again (finished trials kept, the interrupted one resumed from its
checkpoint, N in total), and two workers never running the same trial."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_cli, start_cli, write_idx_folder

pytest.importorskip("optuna")

from trainlab.analysis.sweep import load_space, summarize, sweep  # noqa: E402
from trainlab.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    return write_idx_folder(tmp_path_factory.mktemp("idx"), n_train=600, n_test=100)


def space_file(tmp_path, idx_dir, space: str, epochs: int = 2) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(f'dataset = "idx:{idx_dir}"\nmodel = "mlp-reg"\nepochs = {epochs}\nval_size = 100\n'
                    f'threads = 1\nprecision = "32"\nmodel_kwargs = {{ hidden = [32] }}\n\n[space]\n{space}\n')
    return path


SPACE = ('lr = { low = 1e-3, high = 1e-1, log = true }\nbatch_size = { low = 32, high = 64, step = 32 }\n'
         '"model_kwargs.dropout" = { choices = [0.0, 0.3] }')


def test_a_space_reads_into_fixed_keys_and_ranges(tmp_path, idx_dir):
    space = load_space(space_file(tmp_path, idx_dir, SPACE))
    assert space.fixed["model"] == "mlp-reg" and set(space.params) == {"lr", "batch_size", "model_kwargs.dropout"}
    assert space.params["lr"] == {"low": 1e-3, "high": 1e-1, "log": True}
    assert space.params["batch_size"]["step"] == 32 and space.params["model_kwargs.dropout"]["choices"] == [0.0, 0.3]


@pytest.mark.parametrize("line, words", [
    ("", "has no [space] table"),
    ("lrr = { low = 1, high = 2 }", "lrr is not a config or recipe key"),
    ("name = { choices = ['a', 'b'] }", "name cannot be swept"),
    ("lr = { low = 0.1, high = 0.01 }", "needs numbers low < high"),
    ("lr = { low = 0.0, high = 0.1, log = true }", "with log = true needs low > 0"),
    ("batch_size = { low = 32, high = 64, step = 0.5 }", "step makes an integer range"),
    ("lr = { choices = [] }", "choices must be a list of 1 to 100"),
    ("lr = { low = 1e-3, high = 1e-2, choices = [1] }", "must be { low, high [, log] }"),
    ("lr = 0.1", "must be a table"),
    ("lr = { low = 1e-3, high = 1e9 }", "lr = 1000000000.0"),  # the range's end is checked as a config
])
def test_a_bad_space_is_one_sentence_naming_the_key(tmp_path, idx_dir, line, words):
    path = space_file(tmp_path, idx_dir, line)
    if not line:
        path.write_text(path.read_text().replace("[space]\n", ""))
    with pytest.raises(ConfigError) as e:
        load_space(path)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_sweep_makes_each_trial_a_run_folder_and_selects_on_validation(tmp_path, idx_dir):
    result = sweep(space_file(tmp_path, idx_dir, SPACE), trials=3, out=tmp_path / "sw")
    assert result.summary["trials"] == 3 and len(result.trials) == 3
    for t in result.trials:
        run = tmp_path / "sw" / "trials" / t["run"]
        assert (run / "config.toml").is_file() and (run / "checkpoints").is_dir()
    complete = [t for t in result.trials if t["state"] == "COMPLETE"]
    assert result.best["value"] == min(t["value"] for t in complete)  # val_loss: lower is better
    saved = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert saved["best"]["number"] == result.best["number"]
    assert set(saved["importances"]) == {"lr", "batch_size", "model_kwargs.dropout"}
    assert (tmp_path / "sw" / "sweep.png").stat().st_size > 1000  # parameter vs score, per parameter


def test_kill_9_then_the_same_command_keeps_finished_trials_and_resumes_the_interrupted(tmp_path, idx_dir):
    space = space_file(tmp_path, idx_dir, SPACE, epochs=6)
    out = tmp_path / "sw"
    proc = start_cli("sweep", space, "--trials", "3", "--out", out, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    second = out / "trials" / "trial-0001"
    deadline = time.monotonic() + 240
    while not (second / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the sweep ended before the kill: nothing was tested"
    again = run_cli("sweep", space, "--trials", "3", "--out", out, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    result = summarize(out)
    assert result.summary["trials"] == 3
    folders = [t["run"] for t in result.trials]
    assert len(set(folders)) == 3 and {"trial-0000", "trial-0001"} <= set(folders)  # 0001 continued in place
    events = [json.loads(x) for x in (second / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert any(e["event"] == "resume" and e.get("by") == "rerun" for e in events)  # resumed, not restarted
    first_rows = [x for x in (out / "trials" / "trial-0000" / "metrics.jsonl").read_text().splitlines()
                  if '"event"' in x]
    assert first_rows == []  # the finished trial was not trained again


def test_two_workers_never_run_the_same_trial(tmp_path, idx_dir):
    result = sweep(space_file(tmp_path, idx_dir, SPACE), trials=4, out=tmp_path / "sw", workers=2)
    numbers = [t["number"] for t in result.trials]
    folders = [t["run"] for t in result.trials]
    assert len(result.trials) == 4 and len(set(numbers)) == 4 and len(set(folders)) == 4
    for run in folders:  # each trial's folder was trained once, from its start
        text = (tmp_path / "sw" / "trials" / run / "metrics.jsonl").read_text()
        assert '"event"' not in text


def test_the_report_shows_a_sweep_and_a_rate_finder(tmp_path, idx_dir, cli):
    pytest.importorskip("matplotlib")
    sweep(space_file(tmp_path, idx_dir, SPACE), trials=2, out=tmp_path / "sw")
    assert cli("lr-find", "--dataset", f"idx:{idx_dir}", "--model", "mlp", "--val-size", "100", "--batch-size",
               "32", "--threads", "1", "--steps", "20", "--out", tmp_path / "lrf").returncode == 0
    done = cli("report", tmp_path / "sw", tmp_path / "lrf", "-o", tmp_path / "r.html")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "r.html").read_text()
    assert "<h2>Sweep " in page and "Parameter importances" in page and "reported once" in page
    assert "Learning-rate range test: mlp" in page and page.count("data:image/png;base64,") >= 3
    assert "<h2>trial-0000" in page or "<h2>trial-0001" in page  # the trials themselves, as runs


def test_an_rdb_storage_url_is_recorded_and_used_again(tmp_path, idx_dir):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = space_file(tmp_path, idx_dir, SPACE)
    sweep(space, trials=1, out=tmp_path / "sw", storage=url)
    assert (tmp_path / "study.db").is_file() and not (tmp_path / "sw" / "study.journal").exists()
    assert sweep(space, trials=2, out=tmp_path / "sw").summary["trials"] == 2  # the recorded URL, found again
    with pytest.raises(ConfigError, match="already records the storage"):
        sweep(space, trials=2, out=tmp_path / "sw", storage="sqlite:///other.db")
