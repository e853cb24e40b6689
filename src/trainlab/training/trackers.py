"""Experiment trackers as callbacks: MLflow (`track = "mlflow"` or `"mlflow:URI"`).

`pip install trainlab[mlflow]`: the mlflow package is imported only when a run asks for it,
on the tracker's own thread (so it is imported inside a function). What is sent: the run's
config as params; tags (model, data, recipe, git commit, run folder); every metrics row
(MLflow step = the row's global step, the epoch as a metric of its own); the train loss
every `log_every` optimizer steps (`train_loss_step`, read on the host once per window); at
the end the final test accuracy and the run's files as artifacts (config.toml, meta.json,
metrics.jsonl, results.json, and model.pt up to MAX_MODEL_ARTIFACT; never the checkpoints).

`mlflow` alone: MLFLOW_TRACKING_URI when set, else a local store beside the runs,
sqlite:///RUNS_DIR/mlflow.db with artifacts in RUNS_DIR/mlartifacts (MLflow 3 refuses its
plain-folder store unless MLFLOW_ALLOW_FILE_STORE=true). `mlflow:URI`: any tracking URI.

A tracker never stops training: every call into MLflow runs on a thread of its own (a slow
or dead server never holds a step up); its first failure (server down, disk full, mlflow not
installed) is said in ONE warning and nothing more is sent; the run's own files, metrics.jsonl
first, are complete either way. A resume continues the same MLflow run: its id is the
callback's state, so it is in every checkpoint.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path

from trainlab._version import __version__
from trainlab.store import runs
from trainlab.text import hide_credentials
from trainlab.training.callbacks import Callback
from trainlab.training.step_loss import StepLoss

log = logging.getLogger("trainlab")

EXPERIMENT = "trainlab"  # the MLflow experiment (MLFLOW_EXPERIMENT_NAME overrides it)
MAX_MODEL_ARTIFACT = 256 * 2**20  # a larger model.pt stays in the run folder (a tag says so)
FILES = (runs.CONFIG_FILE, runs.META_FILE, runs.METRICS_FILE, runs.RESULTS_FILE)
MAX_QUEUE = 10_000  # calls waiting for MLflow: memory stays bounded when it falls behind
CLOSE_TIMEOUT = 120.0  # seconds the end of a run waits for MLflow to take what is queued
START_WAIT = 15.0  # seconds the first checkpoint waits for the MLflow run id (the sender's start): a hung
# server stalls one checkpoint that long at most; a local store starts in a few seconds
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param's value
BATCH = {"params": 100, "metrics": 1000, "tags": 100}  # MLflow's limits per log_batch call


def tracking_uri(track: str, runs_dir: str | Path) -> tuple[str, str | None]:
    """(the tracking URI, the artifact location of an experiment trainlab creates there)."""
    _, _, uri = track.partition(":")
    if uri:
        return uri, None
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], None
    root = Path(runs_dir).resolve()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()


def sqlite_problem(uri: str) -> str | None:
    """Why a sqlite:/// store cannot be opened (checked before MLflow, whose engine retries with
    backoff for about 100 s), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///"):])
    if path.is_dir():
        return f"{path} is a folder, not a database file"
    for parent in path.parents:  # the nearest existing ancestor must be a folder we may write in
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, so {path} cannot be created"
            if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
                return f"{parent} is not writable"
            break
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not readable and writable"
    return None


def flat_params(config: dict) -> dict[str, str]:
    """A config as MLflow params: tables flattened (model_kwargs.hidden), values as text."""
    out = {}
    for key, value in config.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            text = str(v)
            out[key if sub is None else f"{key}.{sub}"] = text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 3] + "..."
    return out


def row_metrics(row: dict, at_ms: int) -> list[tuple[str, float, int, int]]:
    """(key, value, step, timestamp) of each number in a metrics row; step = its global step."""
    step = int(row.get("global_step", row.get("epoch", 0)))
    return [(k, float(v), at_ms, step) for k, v in row.items()
            if k != "global_step" and isinstance(v, (int, float)) and not isinstance(v, bool)]


def _reason(e: BaseException | str) -> str:
    if isinstance(e, str):
        return e
    if isinstance(e, ImportError) and (e.name or "").split(".")[0] == "mlflow":
        return "the mlflow package is not installed: pip install trainlab[mlflow]"
    text = hide_credentials((str(e).strip().splitlines() or [""])[0])  # MLflow's errors quote the URI
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


class _Sender:
    """Calls run one after another on a daemon thread. The first failure goes to `on_fail`
    (once); every call after it is dropped."""

    def __init__(self, on_fail):
        self.queue: queue.Queue = queue.Queue(MAX_QUEUE)
        self.failed = False
        self._on_fail, self._lock = on_fail, threading.Lock()
        self.thread = threading.Thread(target=self._work, name="trainlab-mlflow", daemon=True)
        self.thread.start()

    def submit(self, fn, *args) -> None:
        if self.failed:
            return
        try:
            self.queue.put_nowait((fn, args))
        except queue.Full:
            self.fail(f"MLflow fell {MAX_QUEUE} calls behind")

    def fail(self, why) -> None:
        with self._lock:
            if self.failed:
                return
            self.failed = True
        self._on_fail(why)

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            fn, args = item
            if self.failed:
                continue
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 -- any failure ends the tracking, never the training
                self.fail(e)

    def close(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for what is queued; True when all of it was taken."""
        deadline = time.monotonic() + timeout
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return False
        self.thread.join(max(0.0, deadline - time.monotonic()))
        return not self.thread.is_alive()


class MlflowTracker(Callback):
    """Logs a run to MLflow (see the module's doc). `config`: the run's config (its params);
    `tags`: more run tags; `log_every`: optimizer steps per train-loss reading (0: epochs only).
    Under a Session, `attach(run_dir)` names the run folder, `finish()` sends its files and
    `close()` waits for the sender; under fit() alone, the end of fit() does both."""
    order = 72  # after the metrics log (70): the row holds its keys; before the checkpoint (80): its id is in it
    state_key = "mlflow"

    def __init__(self, track: str = "mlflow", config: dict | None = None, *, runs_dir: str | Path = "runs",
                 log_every: int = 50, tags: dict | None = None, is_main: bool = True):
        self.track = track
        self.uri, self.artifact_location = tracking_uri(track, runs_dir)
        self.config, self.tags, self.is_main = dict(config or {}), dict(tags or {}), is_main
        self.window = StepLoss(log_every)
        self.run_dir: Path | None = None
        self.run_id: str | None = None
        self.saved: dict = {}  # a resume's state: the MLflow run to continue
        self.started = threading.Event()  # set when _start has decided run_id (or failed)
        self.waited = False
        self.sender: _Sender | None = None
        self.client = None
        self.finished = False

    def attach(self, run_dir: str | Path) -> None:
        """The run folder. The local default store lies beside it (runs_dir = its parent), not
        under the working folder: a resume from elsewhere finds the same store."""
        self.run_dir = Path(run_dir).resolve()
        self.uri, self.artifact_location = tracking_uri(self.track, self.run_dir.parent)

    # ------------------------------------------------------------ the hooks (main thread)

    def on_fit_start(self, run):
        if self.is_main and self.sender is None:
            self.sender = _Sender(self._warn)
            self.sender.submit(self._start)

    def on_step_end(self, run):
        if self.sender is None or self.sender.failed:
            return None
        point = self.window.add(run.state)
        if point is not None:
            step, value = point
            self.sender.submit(self._metrics, [("train_loss_step", value, _now(), step)])
        return None

    def on_epoch_end(self, run, row):
        if self.sender is not None:
            self.sender.submit(self._metrics, row_metrics(row, _now()))
        return None

    def on_validation_end(self, run, row):  # --val-every: a mid-epoch row, at its global step too
        return self.on_epoch_end(run, row)

    def on_fit_end(self, run):
        if self.run_dir is None:  # fit() alone: no Session will call finish() and close()
            self.finish(step=run.state.global_step)
            self.close()

    def finish(self, results: dict | None = None, step: int = 0) -> None:
        """The run is done: its final test accuracy, its files as artifacts, status FINISHED."""
        if self.sender is None:
            return
        accuracy = ((results or {}).get("test") or {}).get("accuracy")
        if isinstance(accuracy, (int, float)):
            self.sender.submit(self._metrics, [("test_acc_final", float(accuracy), _now(), step)])
        self.sender.submit(self._artifacts)
        self.sender.submit(self._end, "FINISHED")
        self.finished = True

    def close(self) -> None:
        """Wait (up to CLOSE_TIMEOUT) for MLflow to take what is queued; a run that did not
        finish is marked KILLED (a resume marks it RUNNING again)."""
        if self.sender is None:
            return
        if not self.finished:
            self.sender.submit(self._end, "KILLED")
        if not self.sender.close(CLOSE_TIMEOUT):
            self.sender.fail(f"MLflow did not take what was queued within {CLOSE_TIMEOUT:.0f} s")
        self.sender = None

    def state_dict(self) -> dict:
        """The MLflow run this run logs to, for a resume in place to continue it. Its id is set
        by the sender's first call: the first checkpoint waits for it (bounded). The URI is
        stored without credentials; a run whose tracking failed keeps the run it had."""
        if not self.is_main:
            return {}
        if self.sender is not None and not self.sender.failed and not self.waited:
            self.waited = True  # once per run: a hung server must not stall every checkpoint
            self.started.wait(START_WAIT)
        window = self.window.state_dict()
        if self.run_id is None and self._continues(self.saved):
            return {**self.saved, "window": window}
        return {"run_id": self.run_id, "uri": hide_credentials(self.uri),
                "run_dir": None if self.run_dir is None else str(self.run_dir), "window": window}

    def load_state_dict(self, state: dict) -> None:
        self.saved = dict(state) if isinstance(state, dict) else {}
        self.window.load_state_dict(self.saved.get("window"))

    def _continues(self, saved: dict) -> bool:
        """Is `saved` this run's own MLflow run (a resume in place), not a parent's (a fork)?"""
        if not saved.get("run_id") or self.run_dir is None or not isinstance(saved.get("run_dir"), str):
            return False
        try:
            same_dir = Path(saved["run_dir"]).resolve() == self.run_dir
        except (OSError, ValueError, RuntimeError):  # a damaged entry (a NUL byte, a loop): not ours
            return False
        return hide_credentials(str(saved.get("uri"))) == hide_credentials(self.uri) and same_dir

    def _warn(self, why) -> None:
        where = f"; every metric is in {self.run_dir / runs.METRICS_FILE}" if self.run_dir is not None else ""
        log.warning("MLflow tracking stopped (%s): training goes on and sends nothing more to %s%s",
                    _reason(why), hide_credentials(self.uri), where)

    # ------------------------------------------------------------ the calls (sender thread)

    def _start(self) -> None:
        try:
            self._open()
        finally:
            self.started.set()

    def _open(self) -> None:
        # (mlflow is optional: imported here, on this thread, only when a run asks for it)
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # its INFO lines (database set-up) are not trainlab's output
            logging.getLogger(name).setLevel(logging.WARNING)
        if self.uri.startswith(("http://", "https://")):  # a dead server: a few seconds, not minutes of retries
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        problem = sqlite_problem(self.uri)
        if problem:  # MLflow would retry opening it for ~100 s before saying so
            raise OSError(problem)
        self.client = MlflowClient(tracking_uri=self.uri)
        params = flat_params(self.config)
        saved = self.saved
        if self._continues(saved):
            self.run_id = saved["run_id"]  # a resume in place: the same MLflow run goes on
            self.client.update_run(self.run_id, status="RUNNING")
            had = self.client.get_run(self.run_id).data.params  # params cannot change: new keys only
            self._batch(params={k: v for k, v in params.items() if k not in had},
                        tags={f"resume.changed.{k}": v for k, v in params.items() if k in had and had[k] != v})
            return
        commit = runs.git_commit()
        tags = {"model": self.config.get("model"), "data": self.config.get("dataset"),
                "recipe": self.config.get("recipe"), "git_commit": commit, "mlflow.source.git.commit": commit,
                "trainlab.version": __version__, "trainlab.run_dir": None if self.run_dir is None else str(self.run_dir),
                "trainlab.parent_mlflow_run": saved.get("run_id"), **self.tags}  # parent: a fork's
        name = self.run_dir.name if self.run_dir is not None else None
        run = self.client.create_run(self._experiment(), run_name=name,
                                     tags={k: str(v) for k, v in tags.items() if v is not None})
        self.run_id = run.info.run_id
        self._batch(params=params)

    def _experiment(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self.artifact_location)
        except Exception:  # noqa: BLE001 -- another run created it meanwhile: use that one
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _batch(self, params: dict | None = None, metrics: list | None = None, tags: dict | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag  # (optional package: see _start)

        items = {"params": [Param(k, v) for k, v in (params or {}).items()],
                 "metrics": [Metric(*m) for m in metrics or []],
                 "tags": [RunTag(k, str(v)) for k, v in (tags or {}).items()]}
        for kind, entities in items.items():
            for i in range(0, len(entities), BATCH[kind]):
                self.client.log_batch(self.run_id, **{kind: entities[i:i + BATCH[kind]]})

    def _metrics(self, metrics: list) -> None:
        if self.run_id is not None:
            self._batch(metrics=metrics)

    def _artifacts(self) -> None:
        if self.run_dir is None or self.run_id is None:
            return
        for name in (*FILES, runs.WEIGHTS_FILE):
            path = self.run_dir / name
            if path.is_symlink() or not path.is_file():  # only the run's own files, never a link's target
                continue
            size = path.stat().st_size
            if name == runs.WEIGHTS_FILE and size > MAX_MODEL_ARTIFACT:
                self.client.set_tag(self.run_id, "trainlab.model_pt", f"not uploaded ({size:,} bytes): see {path}")
                continue
            self.client.log_artifact(self.run_id, str(path))

    def _end(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)


def _now() -> int:
    return int(time.time() * 1000)


def from_config(cfg, is_main: bool = True) -> MlflowTracker | None:
    """The tracker a run's config asks for (`track`), or None."""
    if not cfg.track:
        return None
    return MlflowTracker(cfg.track, cfg.to_dict(), runs_dir=cfg.runs_dir, log_every=cfg.log_every, is_main=is_main)
