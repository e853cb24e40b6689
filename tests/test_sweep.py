"""Sweeps on Optuna (trainlab.tune.sweep): the space file's checks, trials as run folders,
kill -9 and the same command again (finished trials kept, the interrupted one resumed from its
checkpoint, N in total), and two workers never running the same trial."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import idx_folder, run_cli, start_cli

pytest.importorskip("optuna")

from trainlab.tune.sweep import load_space, summarize, sweep  # noqa: E402
from trainlab.errors import ConfigError  # noqa: E402


idx_dir = idx_folder(600, 100)


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


def test_model_kwargs_dotted_without_quotes_reads_as_quoted(tmp_path, idx_dir):
    """TOML reads model_kwargs.dropout = {..} unquoted as a table model_kwargs: it was refused as
    'model_kwargs cannot be swept ... where a run goes', which it is not."""
    space = load_space(space_file(tmp_path, idx_dir, "model_kwargs.dropout = { choices = [0.0, 0.3] }\n"
                                                     "lr = { low = 1e-3, high = 1e-1 }"))
    assert space.params["model_kwargs.dropout"] == {"choices": [0.0, 0.3]} and set(space.params) == {
        "lr", "model_kwargs.dropout"}


@pytest.mark.parametrize("line, words", [
    ("", "has no [space] table"),
    ("lrr = { low = 1, high = 2 }", "lrr is not a config or recipe key"),
    ("name = { choices = ['a', 'b'] }", "name cannot be swept"),
    ("lr = { low = 0.1, high = 0.01 }", "needs numbers low < high"),
    ("lr = { low = 0.0, high = 0.1, log = true }", "with log = true needs low > 0"),
    ("batch_size = { low = 32, high = 64, step = 0.5 }", "batch_size is an integer range"),
    ("batch_size = { low = 32.0, high = 64.5 }", "batch_size is an integer range"),  # an int key, a float range
    ("epochs = { low = 1, high = 3.5 }", "epochs is an integer range"),
    ("optimizer = { low = 1, high = 2 }", "optimizer is not a number"),
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
    # the study never sees a test figure: the winner's is read from its run folder, once
    import optuna

    from trainlab.tune import sweep_storage

    study = optuna.load_study(study_name="trainlab", storage=sweep_storage.open_storage(tmp_path / "sw", None))
    assert study.trials and not [k for t in study.trials for k in t.user_attrs if "test" in k]
    assert not [k for t in result.trials for k in t if "test" in k]
    winner = json.loads((tmp_path / "sw" / "trials" / result.best["run"] / "results.json").read_text())
    assert result.best["test_accuracy"] == winner["test"]["accuracy"] == saved["best"]["test_accuracy"]


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


def test_an_rdb_storage_url_is_recorded_0600_and_must_be_given_again(tmp_path, idx_dir):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = space_file(tmp_path, idx_dir, SPACE)
    sweep(space, trials=1, out=tmp_path / "sw", storage=url)
    assert (tmp_path / "study.db").is_file() and not (tmp_path / "sw" / "study.journal").exists()
    assert (tmp_path / "sw" / "storage.url").stat().st_mode & 0o777 == 0o600  # it may hold a password
    with pytest.raises(ConfigError, match="give --storage with that URL again"):  # the folder alone never decides
        sweep(space, trials=2, out=tmp_path / "sw")
    assert sweep(space, trials=2, out=tmp_path / "sw", storage=url).summary["trials"] == 2
    with pytest.raises(ConfigError, match="already records another storage"):
        sweep(space, trials=2, out=tmp_path / "sw", storage="sqlite:///other.db")
    assert summarize(tmp_path / "sw").summary["trials"] == 2  # the report reads sweep.json, not the URL


# ---- faults: a failing trial, a kill, a signal, a second copy, a hostile folder, a bad URL ----

def trained_configs(out: Path, keys=("lr", "batch_size")) -> list[tuple]:
    """The swept values of every trial folder that was trained (its config.toml), one per folder."""
    import tomllib

    found = []
    for folder in sorted((out / "trials").glob("trial-*")):
        if (folder / "config.toml").is_file():
            cfg = tomllib.loads((folder / "config.toml").read_text())
            found.append(tuple(cfg.get(k) for k in keys))
    return found


def assert_nothing_trained_twice(out: Path, trials: int) -> None:
    configs = trained_configs(out)
    assert len(configs) == trials and len(set(configs)) == len(configs), configs


def wait_for(path: Path, proc, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


SLOW = 'lr = { low = 1e-3, high = 1e-1, log = true }\nbatch_size = { low = 32, high = 64, step = 32 }'


def diverging_space(tmp_path, idx_dir, lrs: str) -> Path:
    """Plain mlp, SGD with heavy momentum, small batches: lr 10 turns the loss NaN in epoch 1 (measured)."""
    space = space_file(tmp_path, idx_dir, f"lr = {{ choices = {lrs} }}", epochs=1)
    space.write_text(space.read_text().replace('model = "mlp-reg"', 'model = "mlp"\noptimizer = "sgd"\n'
                                               'momentum = 0.99\nbatch_size = 16'))
    return space


def test_a_diverging_trial_fails_alone_and_the_study_finishes_its_n_trials(tmp_path, idx_dir, cli):
    space = diverging_space(tmp_path, idx_dir, "[0.01, 10.0]")
    done = cli("sweep", space, "--trials", "5", "--out", tmp_path / "sw")
    assert done.returncode == 0, done.stderr[-2000:]
    s = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert s["trials"] == 5 and s["failed"] >= 1 and s["complete"] >= 1, s
    failed = [r for r in s["rows"] if r["state"] == "FAIL"]
    assert all("diverged" in r["reason"] or "as trial" in r["reason"] for r in failed)
    assert "failed: diverged" in done.stdout


def test_a_space_that_always_fails_ends_after_n_trials_in_one_sentence(tmp_path, idx_dir, cli):
    space = diverging_space(tmp_path, idx_dir, "[8.0, 10.0]")
    done = cli("sweep", space, "--trials", "2", "--out", tmp_path / "sw")
    assert done.returncode == 1 and "no trial has completed yet (2 failed; the first: diverged" in done.stderr
    assert len(done.stderr.strip().splitlines()[-1:]) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("how", ["kill-9", "sigterm"])
def test_a_killed_or_stopped_sweep_continues_its_trial_and_trains_nothing_twice(tmp_path, idx_dir, how):
    space = space_file(tmp_path, idx_dir, SLOW, epochs=6)
    out = tmp_path / "sw"
    proc = start_cli("sweep", space, "--trials", "3", "--out", out, stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE, text=True)
    second = out / "trials" / "trial-0001"
    wait_for(second / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL if how == "kill-9" else signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if how == "kill-9":
        assert proc.returncode == -signal.SIGKILL, "the sweep ended before the kill: nothing was tested"
    else:
        assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
        assert "run the same sweep command again to continue it" in err.strip().splitlines()[-1]
    again = run_cli("sweep", space, "--trials", "3", "--out", out, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    result = summarize(out)
    assert result.summary["trials"] == 3 and result.summary["complete"] + result.summary["pruned"] == 3
    assert {t["run"] for t in result.trials} >= {"trial-0000", "trial-0001"}  # 0001 continued in place
    events = [json.loads(x) for x in (second / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert any(e["event"] == "resume" and e.get("by") == "rerun" for e in events)  # resumed, not restarted
    assert_nothing_trained_twice(out, 3)  # the restarted sampler drew new parameters


@pytest.mark.parametrize("shared", ["same-out", "same-storage"])
def test_two_copies_of_one_sweep_cooperate_and_train_nothing_twice(tmp_path, idx_dir, shared):
    space = space_file(tmp_path, idx_dir, SLOW, epochs=2)
    outs = [tmp_path / "sw", tmp_path / ("sw" if shared == "same-out" else "sw2")]
    storage = ["--storage", f"sqlite:///{tmp_path / 'study.db'}"] if shared == "same-storage" else []
    procs = [start_cli("sweep", space, "--trials", "4", "--out", out, *storage, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True) for out in outs]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in results]
    configs = trained_configs(outs[0]) + (trained_configs(outs[1]) if outs[1] != outs[0] else [])
    assert len(configs) == 4 and len(set(configs)) == 4, configs
    result = summarize(outs[0], storage[1] if storage else None)
    assert result.summary["trials"] == 4 and result.summary["failed"] == 0


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ")[1][0] not in "ZX"  # a zombie nobody reaps is gone
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize("how", ["sigterm", "kill-9"])
def test_a_sweep_with_workers_stopped_or_killed_stops_its_workers(tmp_path, idx_dir, how):
    space = space_file(tmp_path, idx_dir, SLOW, epochs=8)
    out = tmp_path / "sw"
    proc = start_cli("sweep", space, "--trials", "4", "--out", out, "--workers", "2", stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE, text=True)
    wait_for(out / "trials" / "trial-0000" / "checkpoints" / "last.pt", proc)
    children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    workers = [c for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")]
    assert len(workers) == 2
    proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    if how == "sigterm":  # forwarded, waited for, one line, 128 + signum
        assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-2000:]
        assert err.strip().splitlines()[-1] == "trainlab: interrupted (SIGTERM)"
    deadline = time.monotonic() + 120  # (kill -9: the workers learn it from the OS, PR_SET_PDEATHSIG)
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)
    finished = [p for p in (out / "trials").iterdir() if (p / "results.json").is_file()]
    assert len(finished) < 4  # they stopped, not trained the rest of the study alone
    again = run_cli("sweep", space, "--trials", "4", "--out", out, "--workers", "2", timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_nothing_trained_twice(out, 4)


@pytest.mark.parametrize("planted", ["study.journal", "study.journal.lock", ".sweep.lock", "storage.url", "trials",
                                     "trials/trial-0000", ".claims/trial-0000.lock"])
def test_a_link_planted_in_a_sweep_folder_is_refused_and_its_target_untouched(tmp_path, idx_dir, planted):
    space = space_file(tmp_path, idx_dir, SPACE, epochs=1)
    out = tmp_path / "sw"
    (out / Path(planted).parent).mkdir(parents=True, exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if planted == "storage.url":  # a received folder naming a database outside it
        target = elsewhere / "url"
        target.write_text(f"sqlite:///{elsewhere / 'study.db'}\n")
    elif planted.startswith("trials"):
        target = elsewhere / "dir"
        target.mkdir()
    else:
        target = elsewhere / "file"  # a dangling link: following it would create the file
    (out / planted).symlink_to(target)
    before = sorted(p.name for p in elsewhere.rglob("*"))
    done = run_cli("sweep", space, "--trials", "1", "--out", out)
    assert done.returncode == 1, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()
    assert len(line) == 1 and "is a symbolic link (planted?)" in line[0], done.stderr[-2000:]
    assert sorted(p.name for p in elsewhere.rglob("*")) == before  # nothing created, appended or trained there


@pytest.mark.parametrize("url", ["nonsense", "nosuchdb://host/x", "sqlite://", "sqlite:///{tmp}/missing/dir/x.db",
                                 "sqlite:///relative.db",
                                 "postgresql://nobody@127.0.0.1:1/db", "sqlite:///{tmp}/x.db\nrm"])
def test_a_bad_storage_url_is_one_sentence_exit_2_and_nothing_is_recorded(tmp_path, idx_dir, url):
    space = space_file(tmp_path, idx_dir, SPACE, epochs=1)
    done = run_cli("sweep", space, "--trials", "1", "--out", tmp_path / "sw", "--storage",
                   url.format(tmp=tmp_path))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "--storage" in lines[0], done.stderr[-2000:]
    assert "internal error" not in lines[0]
    assert not (tmp_path / "sw").exists()  # no folder, no storage.url, no journal


def test_draws_inside_the_ranges_are_checked_together_before_trial_0(tmp_path, idx_dir):
    path = space_file(tmp_path, idx_dir, 'epochs = { low = 2, high = 4 }\nwarmup_epochs = { low = 0.0, high = 3.0 }',
                      epochs=10)
    path.write_text(path.read_text().replace('precision = "32"', 'precision = "32"\nschedule = "cosine"'))
    with pytest.raises(ConfigError, match=r"\[space\] the draw .* is refused .*warmup_epochs"):
        load_space(path)


def test_an_integer_key_draws_integers_inside_its_range(tmp_path, idx_dir):
    space = load_space(space_file(tmp_path, idx_dir, "batch_size = { low = 32, high = 64 }"))
    assert space.params["batch_size"] == {"low": 32, "high": 64, "log": False, "step": 1}
    result = sweep(space, trials=2, out=tmp_path / "sw")
    assert result.summary["failed"] == 0 and all(isinstance(t["params"]["batch_size"], int) for t in result.trials)


def test_confirm_after_the_study_grew_confirms_the_new_winner(tmp_path, idx_dir, cli):
    space = space_file(tmp_path, idx_dir, SLOW, epochs=1)
    for n in (1, 3):
        done = cli("sweep", space, "--trials", n, "--out", tmp_path / "sw", "--confirm", "1")
        assert done.returncode == 0, done.stderr[-2000:]
        best = json.loads((tmp_path / "sw" / "sweep.json").read_text())["best"]["run"]
        assert (tmp_path / "sw" / "trials" / f"confirm-{best}-seed-1" / "results.json").is_file()


def test_a_fifo_planted_as_storage_url_is_refused_without_waiting(tmp_path, idx_dir):
    import os

    out = tmp_path / "sw"
    out.mkdir()
    os.mkfifo(out / "storage.url")
    done = run_cli("sweep", space_file(tmp_path, idx_dir, SPACE, epochs=1), "--trials", "1", "--out", out,
                   "--storage", f"sqlite:///{tmp_path / 'x.db'}", timeout=60)
    assert done.returncode == 1 and "is not a regular file" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "x.db").exists()  # refused before the URL was tried


@pytest.mark.parametrize("text", [b"garbage\x00\xff\n", b'{"op_code": 99}\n', b'{"op_code": 0}\n', b"[1, 2]\n",
                                  b"[" * 100000 + b"\n"])
def test_a_journal_optuna_cannot_replay_is_one_sentence(tmp_path, idx_dir, text):
    """Bytes that are not UTF-8 JSON, or records Optuna never writes, in study.journal: an internal
    error (UnicodeDecodeError, AssertionError, KeyError ...) before; the file is left as it was."""
    out = tmp_path / "sw"
    out.mkdir()
    (out / "study.journal").write_bytes(text)
    done = run_cli("sweep", space_file(tmp_path, idx_dir, SPACE, epochs=1), "--trials", "1", "--out", out)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "is not an Optuna journal" in lines[0], done.stderr[-2000:]
    assert (out / "study.journal").read_bytes() == text and not list(out.glob("trials/trial-*"))


def _open_rdb(url, q):
    from trainlab.tune.sweep_storage import try_rdb

    try:
        try_rdb(url)
        q.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test
        q.put(str(e))


def test_two_copies_creating_one_new_database_at_once_both_open_it(tmp_path):
    """Racing opens of a new sqlite file saw the other copy's half-made tables ('table studies
    already exists', the alembic version row) and refused the URL in 7 of 16 opens (measured)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    for i in range(4):
        url = f"sqlite:///{tmp_path}/race-{i}.db"
        procs = [ctx.Process(target=_open_rdb, args=(url, q)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
    assert [q.get(timeout=10) for _ in range(8)] == ["ok"] * 8
