"""MLflow tracking (training.trackers): real runs logged to a local store and to a tracking
server started here, read back through MlflowClient; a tracker that fails never stops
training (one warning, metrics.jsonl complete); resume continues the same MLflow run."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, assert_resume_bitwise, train_tiny

import trainlab
from trainlab.cli.main import main
from trainlab.config import resolve
from trainlab.store import runs
from trainlab.training.step_loss import StepLoss
from trainlab.training.trackers import flat_params

# part of the test set-up (the `test` extra): in CI this must import, not skip
mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

STOPPED = "MLflow tracking stopped"


def only_run(client: MlflowClient):
    found = client.search_runs([client.get_experiment_by_name("trainlab").experiment_id])
    assert len(found) == 1, found
    return found[0]


def epoch_rows(run_dir: Path) -> list[dict]:
    return [r for r in runs.read_metrics(run_dir) if "event" not in r]


def assert_logged(client: MlflowClient, result, every: int) -> None:
    """Params = the config; tags; every metrics.jsonl number = an MLflow metric value at the row's
    global step; the train loss every `every` steps; the run's files as artifacts."""
    run = only_run(client)
    rid = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params == flat_params(result.config.to_dict())
    meta = runs.read_json(result.run_dir / runs.META_FILE)
    tags = run.data.tags
    assert tags["model"] == "mlp" and tags["data"] == result.config.dataset
    assert tags.get("git_commit") == meta.get("git_commit")
    assert tags["trainlab.run_dir"] == str(result.run_dir) and tags["mlflow.runName"] == result.run_dir.name
    rows = epoch_rows(result.run_dir)
    assert len(rows) == result.config.train.epochs
    keys = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "global_step"}
    for key in keys:
        history = sorted((m.step, m.value) for m in client.get_metric_history(rid, key))
        assert history == [(r["global_step"], pytest.approx(float(r[key]), rel=1e-12)) for r in rows], key
    steps = sorted((m.step, m.value) for m in client.get_metric_history(rid, "train_loss_step"))
    assert [s for s, _ in steps] == list(range(every, rows[-1]["global_step"] + 1, every))
    per_epoch = rows[0]["global_step"] // every  # whole windows per epoch: their mean is the epoch's loss
    for i, row in enumerate(rows):
        window = [v for _, v in steps[i * per_epoch:(i + 1) * per_epoch]]
        assert sum(window) / len(window) == pytest.approx(row["train_loss"], rel=1e-5)
    final = client.get_metric_history(rid, "test_acc_final")
    assert [m.value for m in final] == [pytest.approx(result.test_accuracy)]
    names = {a.path for a in client.list_artifacts(rid)}
    assert names == {"config.toml", "meta.json", "metrics.jsonl", "results.json", "model.pt"}
    local = Path(client.download_artifacts(rid, "metrics.jsonl"))
    assert local.read_bytes() == (result.run_dir / runs.METRICS_FILE).read_bytes()


def test_a_run_logged_to_the_local_store_reads_back_whole(tiny_data, tmp_path):
    # 500 training images, batch 32: 16 steps an epoch, 4 windows of 4
    result = train_tiny(tmp_path, tiny_data, track="mlflow", log_every=4)
    assert (tmp_path / "mlflow.db").is_file()  # the default store: beside the runs
    assert_logged(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), result, every=4)


def test_resume_continues_the_same_mlflow_run_and_stays_bitwise(tiny_data, tmp_path):
    cfg = {"model": "mlp", "epochs": 3, "batch_size": 32, "val_size": 100, "quiet": True, "threads": 1,
           "track": "mlflow", "log_every": 8}
    # stopped at step 20, mid-window (8-step windows): the window's open sum is in the checkpoint
    assert_resume_bitwise(cfg, tmp_path, step=20, train_kw={"data": tiny_data}, resume_kw={"data": tiny_data})
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("trainlab").experiment_id])
    by_name = {r.info.run_name: r for r in found}
    assert sorted(by_name) == ["cut", "full"]  # one MLflow run each: the resume did not start another
    cut = by_name["cut"]
    assert cut.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(cut.info.run_id, "epoch")]
    assert sorted(set(steps)) == [16, 32, 48]

    def step_losses(run):
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss_step"))
    assert step_losses(cut) == step_losses(by_name["full"])  # the window at 24 spans 17-24, as uninterrupted


def test_mlflow_missing_is_one_warning_and_the_run_finishes(tiny_data, tmp_path, monkeypatch, caplog):
    for name in ("mlflow", "mlflow.tracking", "mlflow.entities"):
        monkeypatch.setitem(sys.modules, name, None)
    with caplog.at_level(logging.WARNING, logger="trainlab"):
        result = train_tiny(tmp_path, tiny_data, track="mlflow", log_every=2)
    warned = [r.getMessage() for r in caplog.records if STOPPED in r.getMessage()]
    assert len(warned) == 1 and "pip install trainlab[mlflow]" in warned[0], warned
    assert len(epoch_rows(result.run_dir)) == 2 and (result.run_dir / "model.pt").is_file()


@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_a_store_that_cannot_be_written_is_one_warning(tiny_data, tmp_path, caplog, where):
    (tmp_path / "blocker").write_text("not a folder")
    (tmp_path / "folder.db").mkdir()
    db = tmp_path / "blocker" / "mlflow.db" if where == "under a file" else tmp_path / "folder.db"
    uri = f"sqlite:///{db}"
    with caplog.at_level(logging.WARNING, logger="trainlab"):
        result = train_tiny(tmp_path / "runs", tiny_data, track=f"mlflow:{uri}")
    assert len([r for r in caplog.records if STOPPED in r.getMessage()]) == 1
    assert len(epoch_rows(result.run_dir)) == 2


@pytest.mark.parametrize("value", ["wandb", "mlflow:", "mlflow:http://user:secret@host:5000", "mlflow:a b",
                                   "mlflow:http://host\n"])
def test_a_bad_track_value_is_one_sentence_exit_2(tmp_path, capsys, value):
    assert main(["train", "--track", value, "--runs-dir", str(tmp_path), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "track = " in err and "Traceback" not in err and not list(tmp_path.iterdir())
    assert "secret" not in err  # a refused URI is quoted without its user:password@


def test_the_step_loss_is_read_once_per_window(monkeypatch):
    reads = []
    real = torch.Tensor.__float__
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: reads.append(1) or real(t))

    class State:
        global_step, last_loss = 0, None

    window, state, got = StepLoss(4), State(), []
    for step in range(1, 11):
        state.global_step, state.last_loss = step, torch.tensor(float(step))
        got.append(window.add(state))
    assert len(reads) == 2  # steps 4 and 8: never once per step
    assert [g for g in got if g] == [(4, 2.5), (8, 6.5)]


# ---------------------------------------------------------------- a tracking server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` with a SQLite backend on 127.0.0.1, in a process group of its own (its
    workers die with it)."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = open(folder / "server.log", "wb")
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{folder / 'server.db'}", "--default-artifact-root", str(folder / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def wait_up(self, seconds: float = 240) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.kill()
        pytest.fail(f"the MLflow server did not start: {Path(self.log.name).read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def assert_ui_shows(uri: str, run, result, png: Path) -> None:
    """The MLflow UI's page for the run, opened in headless Chromium as a person would: it names the
    run and shows its parameters and metrics; the screenshot is kept beside the test's files."""
    from test_report import Browser, find_chromium

    exe = find_chromium()
    if exe is None:
        message = "headless Chromium is missing: apt-get install -y chromium (make test does this)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    browser = Browser(exe)
    try:
        browser.open(f"{uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
        deadline, text = time.monotonic() + 90, ""
        while time.monotonic() < deadline:  # a single-page app: its text arrives after the load event
            text = browser.evaluate("document.body.innerText") or ""
            if result.run_dir.name in text and "batch_size" in text and "val_acc" in text:
                break
            time.sleep(0.5)
        png.write_bytes(browser.screenshot())
    finally:
        browser.close()
    assert result.run_dir.name in text, text[:2000]
    assert "batch_size" in text and "val_acc" in text, text[:2000]  # a parameter and a metric, by name
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    try:
        srv.wait_up()
        yield srv
    finally:
        srv.kill()


def test_a_run_logged_to_a_tracking_server_reads_back_whole_and_a_killed_server_stops_nothing(
        tiny_data, tmp_path, server, caplog):
    result = train_tiny(tmp_path / "runs", tiny_data, track=f"mlflow:{server.uri}", log_every=4)
    client = MlflowClient(server.uri)
    assert_logged(client, result, every=4)
    assert_ui_shows(server.uri, only_run(client), result, tmp_path / "mlflow-run.png")

    class KillServer(trainlab.Callback):
        """Kills the server at the end of epoch 1, once the tracker has its MLflow run."""

        def on_epoch_end(self, run, row):
            if row["epoch"] == 1:
                deadline = time.monotonic() + 120
                while run.tracker.run_id is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert run.tracker.run_id is not None
                server.kill()

    with caplog.at_level(logging.WARNING, logger="trainlab"):
        cut = trainlab.train(resolve({**TINY_RUN, "runs_dir": str(tmp_path / "runs"), "track": f"mlflow:{server.uri}",
                                      "log_every": 4, "epochs": 3}),
                             data=tiny_data, progress=False, callbacks=[KillServer()])
    warned = [r.getMessage() for r in caplog.records if STOPPED in r.getMessage()]
    assert len(warned) == 1, warned
    assert str(cut.run_dir / runs.METRICS_FILE) in warned[0]
    assert [r["epoch"] for r in epoch_rows(cut.run_dir)] == [1, 2, 3]
    assert (cut.run_dir / "model.pt").is_file() and (cut.run_dir / runs.RESULTS_FILE).is_file()


def test_the_first_checkpoint_waits_for_the_mlflow_run_id(monkeypatch, tmp_path):
    """The id is set on the sender thread: a checkpoint taken before it is set would record none,
    and a resume would start a second MLflow run."""
    from trainlab.training.trackers import MlflowTracker

    def slow_open(self):
        time.sleep(0.5)
        self.run_id = "run-1"

    monkeypatch.setattr(MlflowTracker, "_open", slow_open)
    tracker = MlflowTracker("mlflow", runs_dir=tmp_path)
    tracker.attach(tmp_path / "a")
    tracker.on_fit_start(None)
    assert tracker.state_dict()["run_id"] == "run-1"
    tracker.finished = True
    tracker.close()


def test_a_fork_never_records_its_parents_mlflow_run(monkeypatch, tmp_path):
    """A fork loads its parent's state (another run folder): if its own start fails, its
    checkpoint records no MLflow run, not the parent's; a resume in place keeps its own."""
    from trainlab.training.trackers import MlflowTracker

    def failing_open(self):
        raise OSError("server down")

    monkeypatch.setattr(MlflowTracker, "_open", failing_open)
    parent = {"run_id": "parent", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "run_dir": str(tmp_path / "a")}
    for run_dir, expected in ((tmp_path / "fork", None), (tmp_path / "a", "parent")):
        tracker = MlflowTracker("mlflow", runs_dir=tmp_path)
        tracker.load_state_dict(parent)
        tracker.attach(run_dir)
        tracker.on_fit_start(None)
        assert tracker.started.wait(10)
        assert tracker.state_dict()["run_id"] == expected
        tracker.finished = True
        tracker.close()


def test_the_local_store_lies_beside_the_run_whatever_the_working_folder(monkeypatch, tmp_path):
    from trainlab.training.trackers import MlflowTracker

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = MlflowTracker("mlflow", runs_dir="runs")  # the config's relative runs_dir, read from elsewhere
    tracker.attach(tmp_path / "runs" / "a")
    assert tracker.uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert tracker.state_dict()["run_dir"] == str(tmp_path / "runs" / "a")


def test_credentials_in_the_tracking_uri_are_neither_stored_nor_printed(tiny_data, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://someone:secret@127.0.0.1:1")  # nothing listens on port 1
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with caplog.at_level(logging.WARNING, logger="trainlab"):
        result = train_tiny(tmp_path, tiny_data, track="mlflow")
    warned = [r.getMessage() for r in caplog.records if STOPPED in r.getMessage()]
    assert len(warned) == 1 and "***@127.0.0.1:1" in warned[0] and "secret" not in warned[0], warned
    for path in (result.run_dir / "checkpoints").glob("*.pt"):
        assert b"secret" not in path.read_bytes(), path
    assert b"secret" not in (result.run_dir / "config.toml").read_bytes()


def test_an_open_step_loss_window_carries_over_a_resume():
    class State:
        global_step, last_loss = 0, None

    def feed(window, steps):
        state, got = State(), []
        for step in steps:
            state.global_step, state.last_loss = step, torch.tensor(float(step) / 3)
            got.append(window.add(state))
        return got

    whole = feed(StepLoss(4), range(1, 9))
    first = StepLoss(4)
    part = feed(first, range(1, 7))  # stopped after step 6: steps 5 and 6 are in the open window
    again = StepLoss(4)
    again.load_state_dict(first.state_dict())
    assert part + feed(again, range(7, 9)) == whole
    for hostile in (None, 7, {}, {"sum": "x", "n": 2}, {"sum": torch.ones(3), "n": 2}, {"sum": torch.ones(()), "n": -1},
                    {"sum": torch.ones(()), "n": 10**400}, {"sum": torch.ones(()), "n": 4},
                    {"sum": torch.ones((), device="meta"), "n": 2}, {"sum": torch.ones((), dtype=torch.float64), "n": 2}):
        fresh = StepLoss(4)
        fresh.load_state_dict(hostile)  # nothing usable: a new window
        assert fresh.state_dict() == {"sum": None, "n": 0}


def test_credentials_with_an_at_sign_in_the_password_are_hidden_whole():
    from trainlab.text import hide_credentials

    for uri in ("http://alice:pa@ss@127.0.0.1:9/", "http://alice:p a\tss@host/x?q=a@b", "https://u@[::1]:5000/"):
        shown = hide_credentials(uri)
        assert "pa" not in shown.split("//")[1].split("@")[0] and shown.count("***@") == 1, shown
    assert hide_credentials("http://host/path@x") == "http://host/path@x"  # an @ after the host is no secret
