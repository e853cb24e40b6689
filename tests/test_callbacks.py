"""Callbacks (trainlab.training.callbacks): order, keyed state in every checkpoint, the step
path reading no device values, a user's callback surviving a kill -9 bitwise, and library
calls that show what they do."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import SRC, TINY_RUN, cli_env

import trainlab
from trainlab.errors import ConfigError
from trainlab.store.schema import load_checkpoint
from trainlab.training.callbacks import Callback, CallbackList


class Recorder(Callback):
    def __init__(self, calls, name, order=50):
        self.calls, self.name, self.order = calls, name, order
        self.state_key = name

    def on_fit_start(self, run):
        self.calls.append((self.name, "fit_start"))

    def on_epoch_end(self, run, row):
        self.calls.append((self.name, "epoch_end", row["epoch"]))

    def on_fit_end(self, run):
        self.calls.append((self.name, "fit_end"))


def test_callbacks_run_in_declared_order_and_every_one_sees_every_epoch(tmp_path, tiny_data):
    calls = []

    class Stopper(Recorder):
        def on_epoch_end(self, run, row):
            super().on_epoch_end(run, row)
            return True  # votes to stop after the first epoch

    result = trainlab.train(
        {**TINY_RUN, "epochs": 3, "runs_dir": str(tmp_path)}, data=tiny_data, progress=False,
        callbacks=[Recorder(calls, "late", order=60), Stopper(calls, "early", order=20)])
    assert calls == [("early", "fit_start"), ("late", "fit_start"), ("early", "epoch_end", 1),
                     ("late", "epoch_end", 1), ("early", "fit_end"), ("late", "fit_end")]
    assert result.results["stopped"] == "early-stop" and len(result.history) == 1


def test_a_callback_list_refuses_duplicates_and_non_callbacks():
    with pytest.raises(ConfigError, match="state key 'same'"):
        CallbackList([Recorder([], "same"), Recorder([], "same")])
    with pytest.raises(ConfigError, match="subclass trainlab.Callback"):
        CallbackList([lambda run: None])


class Smooth(Callback):
    """An extra metric with its own state: an exponential average of the validation loss."""

    def __init__(self):
        self.value, self.n = None, 0

    def on_epoch_end(self, run, row):
        v = row["val_loss"]
        self.value = v if self.value is None else 0.5 * self.value + 0.5 * v
        self.n += 1
        row["val_loss_smooth"] = self.value  # logged with the epoch's metrics

    def state_dict(self):
        return {"value": self.value, "n": self.n}

    def load_state_dict(self, d):
        self.value, self.n = d["value"], d["n"]


def test_a_callbacks_state_rides_in_every_checkpoint_and_comes_back_on_resume(tmp_path, tiny_data):
    run = trainlab.train({**TINY_RUN, "epochs": 2, "runs_dir": str(tmp_path)}, data=tiny_data,
                         progress=False, callbacks=[Smooth()]).run_dir
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["callbacks"]["Smooth"]["n"] == 2
    # the monitor's state is stored once, at the top level (format 1's key)
    assert "early_stopping" not in ckpt["callbacks"] and ckpt["early_stopping"]["best_epoch"] in (1, 2)
    again = Smooth()
    trainlab.resume(run, epochs=3, data=tiny_data, progress=False, callbacks=[again])
    assert again.n == 3  # 2 restored + 1 new epoch
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss_smooth"] is not None for r in rows if "epoch" in r and "event" not in r] == [True] * 3


# ---------------------------------------------------------------- the step path

SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


@contextlib.contextmanager
def device_reads_forbidden():
    """Every Tensor method that copies a value to the host raises while this is active."""
    saved = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def forbid(name):
        def refuse(*a, **k):
            raise AssertionError(f"a step hook called Tensor.{name}(): a host sync every step")
        return refuse

    for name in SYNCING:
        setattr(torch.Tensor, name, forbid(name))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def watched_step_hooks(monkeypatch, calls):
    original = CallbackList.on_step_end

    def guarded(self, run):
        calls.append(run.state.global_step)
        with device_reads_forbidden():
            original(self, run)

    monkeypatch.setattr(CallbackList, "on_step_end", guarded)


def test_the_step_hooks_read_no_device_value(tmp_path, tiny_data, monkeypatch):
    calls = []
    watched_step_hooks(monkeypatch, calls)

    class Counter(Callback):
        def on_step_end(self, run):
            assert isinstance(run.state.global_step, int) and isinstance(run.state.step, int)

    trainlab.train(
        {**TINY_RUN, "runs_dir": str(tmp_path)}, data=tiny_data, progress=False, callbacks=[Counter()])
    assert calls and calls == sorted(calls)  # the built-in signal poll and the user's hook ran guarded


def test_the_guard_catches_a_step_hook_that_reads_the_device(tmp_path, tiny_data, monkeypatch):
    watched_step_hooks(monkeypatch, [])

    class Reader(Callback):
        def on_step_end(self, run):
            float(run.model.parameters().__next__().sum())  # the mistake the docstring warns of

    with pytest.raises(AssertionError, match="host sync every step"):
        trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path)}, data=tiny_data, progress=False,
                       callbacks=[Reader()])


def test_fit_on_its_own_passes_a_fit_context_and_ends_hooks_on_error(tiny_data):
    from trainlab.data import DeviceLoader
    from trainlab.training.loop import fit
    from trainlab.training.run import FitContext

    seen = []

    class Boom(Callback):
        def on_fit_start(self, run):
            seen.append(type(run).__name__)

        def on_epoch_end(self, run, row):
            raise RuntimeError("boom")

        def on_fit_end(self, run):
            seen.append("fit_end")

    model = trainlab.build_model("mlp", tiny_data.input_shape, tiny_data.num_classes)
    loader = DeviceLoader(tiny_data.train_x, tiny_data.train_y, 64, mean=tiny_data.mean, std=tiny_data.std)
    with pytest.raises(RuntimeError, match="boom"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, epochs=2, callbacks=[Boom()],
            progress=False)
    assert seen == [FitContext.__name__, "fit_end"]


# ---------------------------------------------------------------- a user's callback, killed

SCRIPT = textwrap.dedent("""
    import sys
    import trainlab
    sys.path.insert(0, {tests!r})
    from conftest import tiny_dataset
    from test_callbacks import Smooth

    data = tiny_dataset()
    config = {config!r}
    if sys.argv[1] == "train":
        trainlab.train(config, data=data, progress=False, callbacks=[Smooth()])
    else:
        trainlab.resume(sys.argv[2], data=data, progress=False, callbacks=[Smooth()])
""")


def _script(tmp_path, config: dict):
    path = tmp_path / "user_script.py"
    path.write_text(SCRIPT.format(tests=str(SRC.parent / "tests"), config=config))
    return path


def _epoch_rows(run):
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    return [json.loads(x) for x in lines if x.strip() and '"event"' not in x]


def test_a_users_callback_survives_kill_9_bitwise(tmp_path):
    config = {**TINY_RUN, "epochs": 6, "threads": 1, "save_every": 1}
    env = cli_env()
    straight = dict(config, runs_dir=str(tmp_path / "straight"), name="run")
    subprocess.run([sys.executable, _script(tmp_path, straight), "train"], env=env, check=True, timeout=300)

    killed = dict(config, runs_dir=str(tmp_path / "killed"), name="run")
    run = tmp_path / "killed" / "run"
    proc = subprocess.Popen([sys.executable, _script(tmp_path, killed), "train"], env=env)
    deadline = time.monotonic() + 240
    while len(_epoch_rows(run)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill: nothing was tested"
    assert len(_epoch_rows(run)) < 6
    subprocess.run([sys.executable, _script(tmp_path, killed), "resume", str(run)], env=env, check=True,
                   timeout=300)

    a = load_checkpoint(tmp_path / "straight" / "run" / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["callbacks"]["Smooth"] == b["callbacks"]["Smooth"] and b["callbacks"]["Smooth"]["n"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    smooth = [[r["val_loss_smooth"] for r in _epoch_rows(p)] for p in (tmp_path / "straight" / "run", run)]
    assert smooth[0] == smooth[1] and len(smooth[0]) == 6


# ---------------------------------------------------------------- what a library call shows

def test_a_script_sees_the_run_and_each_epoch_unless_progress_is_false(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(SRC.parent / "tests")!r})
        import trainlab
        from conftest import tiny_dataset
        show = sys.argv[1] == "show"
        trainlab.train({{"model": "mlp", "epochs": 2, "batch_size": 64, "val_size": 100,
                        "runs_dir": {str(tmp_path)!r}}}, data=tiny_dataset(), progress=None if show else False)
    """)
    shown = subprocess.run([sys.executable, "-c", code, "show"], env=cli_env(), capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "epoch 1/2" in shown.stdout and "epoch 2/2" in shown.stdout and "run: " in shown.stdout
    assert "step" in shown.stderr  # the tqdm bar
    quiet = subprocess.run([sys.executable, "-c", code, "quiet"], env=cli_env(), capture_output=True, text=True,
                           timeout=300)
    assert quiet.returncode == 0 and quiet.stdout == "" and "step/s" not in quiet.stderr



# ---------------------------------------------------------------- the edges of the seam

def test_quiet_hides_the_epoch_lines(tmp_path, tiny_data, caplog):
    caplog.set_level("INFO", logger="trainlab")
    trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "quiet": True}, data=tiny_data, progress=False)
    assert not [r for r in caplog.records if r.getMessage().startswith("epoch ")]
    caplog.clear()
    trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "quiet": False}, data=tiny_data, progress=False)
    assert [r.getMessage()[:9] for r in caplog.records if r.getMessage().startswith("epoch ")] == \
        ["epoch 1/2", "epoch 2/2"]


def test_a_callback_state_that_a_checkpoint_cannot_hold_is_refused_at_the_first_save(tmp_path, tiny_data):
    import numpy as np

    class NumpyScalar(Callback):
        def on_epoch_end(self, run, row):
            row["np_metric"] = np.float64(0.5)  # converted: a number

        def state_dict(self):
            return {"best": np.float32(1.5)}

    class Opaque(Callback):
        def state_dict(self):
            return {"thing": object()}

    run = trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "name": "ok"}, data=tiny_data,
                         progress=False, callbacks=[NumpyScalar()]).run_dir
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")  # weights_only: it loads
    assert ckpt["callbacks"]["NumpyScalar"] == {"best": 1.5} and ckpt["history"][-1]["np_metric"] == 0.5
    with pytest.raises(trainlab.TrainlabError, match=r"callback Opaque's state_dict\(\)\['thing'\] holds a "
                                                     r"builtins.object: a checkpoint keeps only tensors"):
        trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "name": "bad"}, data=tiny_data,
                       progress=False, callbacks=[Opaque()])


def test_a_stateful_callback_after_the_checkpoint_writer_is_refused():
    class Late(Callback):
        order = 85

        def state_dict(self):
            return {"n": 1}

    with pytest.raises(ConfigError, match="order below 80"):
        CallbackList([Late()])


def test_a_callback_stopping_mid_epoch_leaves_that_point_in_last_pt(tmp_path, tiny_data):
    class Budget(Callback):
        def on_step_end(self, run):
            if run.state.global_step == 20:
                return "budget"

    result = trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path)}, data=tiny_data, progress=False,
                            callbacks=[Budget()])
    last = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert result.results["stopped"] == "budget" and last["global_step"] == 20 and last["step"] > 0
    model = load_checkpoint(result.run_dir / "model.pt")
    assert all(torch.equal(model["model"][k], last["model"][k]) for k in model["model"])


def test_a_failing_cleanup_does_not_hide_the_error_that_stopped_the_run(tmp_path, tiny_data):
    class Breaks(Callback):
        def on_epoch_end(self, run, row):
            raise RuntimeError("the real error")

    class CleanupFails(Callback):
        def on_fit_end(self, run):
            raise OSError("disk full while closing")

    with pytest.raises(RuntimeError, match="the real error"):
        trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path)}, data=tiny_data, progress=False,
                       callbacks=[Breaks(), CleanupFails()])


def test_fit_keeps_its_one_function_shorthand(tiny_data):
    from trainlab.data import DeviceLoader
    from trainlab.training.loop import fit

    model = trainlab.build_model("mlp", tiny_data.input_shape, tiny_data.num_classes)
    loader = DeviceLoader(tiny_data.train_x, tiny_data.train_y, 64, mean=tiny_data.mean, std=tiny_data.std)
    state = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, epochs=3, progress=False,
                on_epoch_end=lambda s: s.epoch == 2)
    assert state.epoch == 2 and state.stopped == "early-stop"


# ---------------------------------------------------------------- the test split: reported once

def _epoch_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]


def test_by_default_no_epoch_evaluates_logs_or_prints_the_test_split(tmp_path, tiny_data, caplog, monkeypatch):
    from trainlab.training import loop

    passes = []
    real = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda *a: passes.append(1) or real(*a))
    caplog.set_level("INFO", logger="trainlab")
    result = trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "quiet": False}, data=tiny_data, progress=False)
    assert passes == [1, 1]  # one pass per epoch: validation only
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and not [k for r in rows for k in r if k.startswith("test")]
    assert not [k for r in load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["history"] for k in r
                if k.startswith("test")]
    lines = _epoch_lines(caplog)
    assert len(lines) == 2 and not [line for line in lines if "test" in line]
    assert 0 <= result.test_accuracy <= 1  # the one test figure, at the end


def test_test_every_epoch_evaluates_it_and_labels_it_not_for_selection_everywhere(tmp_path, tiny_data, caplog):
    caplog.set_level("INFO", logger="trainlab")
    result = trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "quiet": False, "test_every_epoch": True},
                            data=tiny_data, progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_note"] for r in rows] == ["not for selection"] * 2
    assert all(0 <= r["test_acc"] <= 1 and r["test_loss"] > 0 for r in rows)
    lines = _epoch_lines(caplog)
    assert len(lines) == 2 and all(f"test acc {r['test_acc']:.4f} (not for selection)" in line
                                   for r, line in zip(rows, lines))


def test_the_final_test_summary_is_one_evaluation_of_the_restored_best(tmp_path, tiny_data, monkeypatch):
    from trainlab.training import session

    class Valleys(Callback):
        """Before the monitor: epoch 1 is the best by validation, so early stopping restores it."""
        order = 5

        def on_epoch_end(self, run, row):
            row["val_loss"] = {1: 0.1}.get(row["epoch"], 0.5)

    calls = []
    real = session.summarize_model
    monkeypatch.setattr(session, "summarize_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "epochs": 4, "patience": 1, "precision": "32"},
                            data=tiny_data, progress=False, callbacks=[Valleys()])
    assert calls == [1]  # the test split evaluated once in the whole run
    assert result.results["epochs"] == 2 and result.results["tested"] == {
        "weights": "best", "epoch": 1, "ema": False, "label": "epoch 1 (best val_loss)"}
    ckpts = result.run_dir / "checkpoints"
    assert result.test == trainlab.evaluate_run(ckpts / "best.pt", data=tiny_data)
    assert load_checkpoint(ckpts / "best.pt")["epoch"] == 1 and load_checkpoint(ckpts / "last.pt")["epoch"] == 2


def test_test_every_epoch_changes_no_number_of_the_run(tmp_path, tiny_data):
    """The per-epoch test pass reads the weights only: the same weights, rows and final test
    figure either way (why a resume or a re-run may switch it)."""
    off = trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "name": "off", "epochs": 3}, data=tiny_data,
                         progress=False)
    on = trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path), "name": "on", "epochs": 3, "test_every_epoch": True},
                        data=tiny_data, progress=False)
    a, b = (load_checkpoint(r.run_dir / "model.pt")["model"] for r in (off, on))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "global_step")
    assert [[r[k] for k in keys] for r in off.history] == [[r[k] for k in keys] for r in on.history]
    assert off.test == on.test


# ---------------------------------------------------------------- the built-ins without a Session

def _toy_fit(callbacks, epochs=3):
    """fit() alone (no Session, no config) on a fake loader: a linear model on 64 random rows."""
    from torch.utils.data import DataLoader, TensorDataset

    from trainlab.training.loop import StepParts, fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 2, 2, generator=g), torch.randint(0, 3, (64,), generator=g)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = fit(model, opt, DataLoader(TensorDataset(x, y), batch_size=16), epochs=epochs,
                val_loader=DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16), parts=StepParts(seed=1),
                callbacks=callbacks, progress=False)
    return model, state


def test_checkpoint_writer_metrics_log_and_console_work_under_fit_alone(tmp_path, monkeypatch, caplog):
    from trainlab.store.manifest import CheckpointDir
    from trainlab.training import callbacks as cbs
    from trainlab.training.callbacks import BestAndEarlyStop, CheckpointWriter, Console, MetricsLog

    serialized = []
    real = cbs.serialize
    monkeypatch.setattr(cbs, "serialize", lambda ckpt: serialized.append(ckpt["epoch"]) or real(ckpt))
    monitor = BestAndEarlyStop("val_loss", "min")
    folder = tmp_path / "checkpoints"
    with caplog.at_level("INFO", logger="trainlab"):
        model, state = _toy_fit([monitor, CheckpointWriter(folder, monitor, save_every=1, keep=2),
                                 MetricsLog(tmp_path), Console(monitor)])
    # one serialization per epoch, written to best.pt, last.pt and epoch-NNNN.pt alike
    assert serialized == [1, 2, 3]
    ckpts = CheckpointDir(folder)
    assert sorted(p.name for p in folder.glob("*.pt")) == ["best.pt", "epoch-0002.pt", "epoch-0003.pt", "last.pt"]
    assert all(ckpts.verify(n) is None for n in ("best.pt", "last.pt", "epoch-0003.pt"))
    last = load_checkpoint(folder / "last.pt")
    assert (last["epoch"], last["global_step"]) == (3, 12) and len(last["history"]) == 3
    assert all(torch.equal(last["model"][k], v) for k, v in model.state_dict().items())
    assert load_checkpoint(folder / "best.pt")["epoch"] == monitor.best_epoch
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all("val_loss" in r for r in rows)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 3 and lines[0].endswith("*best")


def test_the_writers_on_another_rank_write_nothing(tmp_path):
    from trainlab.training.callbacks import BestAndEarlyStop, CheckpointWriter, MetricsLog

    monitor = BestAndEarlyStop()
    _toy_fit([monitor, CheckpointWriter(tmp_path / "ck", monitor, is_main=False), MetricsLog(tmp_path, is_main=False)],
             epochs=1)
    assert list(tmp_path.iterdir()) == []


def test_one_way_to_stop_a_hook_returns_its_reason(tmp_path):
    class Stop(Callback):
        def on_step_end(self, run):
            return "budget" if run.state.global_step == 5 else None

    _, state = _toy_fit([Stop()])
    assert state.stopped == "budget" and (state.epoch, state.step) == (1, 1)

    class Writes(Callback):  # the old second channel: refused in words, not silently obeyed
        def on_step_end(self, run):
            run.state.stopped = "mine"

    with pytest.raises(ConfigError, match="return the reason from the hook"):
        _toy_fit([Writes()])

    class Odd(Callback):
        def on_epoch_end(self, run, row):
            return 5

    with pytest.raises(ConfigError, match="returned 5"):
        _toy_fit([Odd()])
