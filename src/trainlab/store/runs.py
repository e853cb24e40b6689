"""The run folder: runs/<name>/ with config.toml, meta.json, metrics.jsonl, results.

An existing run folder is never overwritten: a name the user chose is refused if taken,
a generated name gets a numeric suffix (and the log says so).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from trainlab._version import __version__
from trainlab.config import Config, dumps_toml
from trainlab.errors import ConfigError, StoreError, TrainlabError
from trainlab.metrics import json_safe  # strict JSON: NaN becomes null, as the readers want
from trainlab.store.atomic import append_line, atomic_write_text, write_error
from trainlab.store.history import read_json, read_metrics, read_results  # noqa: F401 (the run folder's readers)

log = logging.getLogger("trainlab")

CONFIG_FILE = "config.toml"
META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
WEIGHTS_FILE = "model.pt"  # the final model of a run: what evaluate / predict / export use
CHECKPOINTS = "checkpoints"  # the folder of checkpoints and their manifest


LOCK_FILE = ".lock"


class RunLock:
    """One process owns a run folder at a time: an OS lock (flock) on runs/<name>/.lock,
    released by the OS when its process dies however it dies (kill -9 included), so a
    stale lock cannot exist. The file holds the owner's PID for the refusal message."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        path = self.run_dir / LOCK_FILE
        try:
            import fcntl
        except ImportError:  # Windows: no flock; one process per run is then up to the user
            return self
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise StoreError(f"cannot lock {self.run_dir} ({e.strerror}): the run folder is "
                                 "read-only; copy it somewhere writable, or fork it with --into") from None
            raise write_error(path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(f"{self.run_dir} is in use by another trainlab process (PID {holder}); "
                             "wait for it to finish or stop it, then try again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (deleting it would race)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def owning_run(folder: Path) -> Path | None:
    """The run folder that `folder` is or lies directly in (runs/x or runs/x/checkpoints)."""
    folder = Path(folder)
    for cand in (folder, folder.parent):
        if (cand / CONFIG_FILE).is_file():
            return cand
    return None


def _mkdir(path: Path, exist_ok: bool = False) -> None:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.EEXIST):
            raise ConfigError(f"cannot make the run folder {path}: a file stands where a folder "
                              "must be; choose another --runs-dir or --name") from None
        raise write_error(path, e) from None


def create_run_dir(cfg: Config) -> Path:
    root = Path(cfg.runs_dir)
    if cfg.name:
        path = root / cfg.name
        if path.exists() or path.is_symlink():
            raise ConfigError(f"run folder {path} already exists and is never overwritten: choose "
                              "another --name, continue it with `trainlab resume`, or start it over with "
                              "--restart (the old folder is kept aside)")
        try:
            _mkdir(path)
        except FileExistsError:  # another process made it a moment ago
            raise ConfigError(f"run folder {path} already exists and is never overwritten: choose "
                              "another --name, or continue it with `trainlab resume`") from None
        return path
    base = f"{cfg.model.replace(':', '-').replace('.', '-')}-{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1000):
        path = root / (base if i == 0 else f"{base}-{i}")
        try:
            _mkdir(path)
        except FileExistsError:
            continue
        if i:
            log.info("run: %s existed, writing to %s instead", root / base, path)
        return path
    raise TrainlabError(f"could not find a free run folder name under {root}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Versions and hardware: what a figure needs to be read correctly."""
    return {
        "trainlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git_commit": git_commit(),
    }


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2) + "\n")


def write_config(run_dir: Path, cfg: Config) -> None:
    atomic_write_text(Path(run_dir) / CONFIG_FILE, dumps_toml(cfg.to_dict()))  # whole or absent


def write_run_header(run_dir: Path, cfg: Config, extra_meta: dict) -> None:
    write_config(run_dir, cfg)
    meta = {"command": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **environment(), **extra_meta}
    write_json(run_dir / META_FILE, meta)


def append_metrics(run_dir: Path, row: dict) -> None:
    append_line(Path(run_dir) / METRICS_FILE, json.dumps(json_safe(row)))


def truncate_metrics(run_dir: Path, epoch: int, marker: dict) -> None:
    """Cut metrics.jsonl back to `epoch` (rows a checkpoint does not cover) and mark the resume;
    a mid-epoch validation row (its "step" key) stays when the checkpoint's global_step covers it."""
    step = marker.get("global_step")
    rows = [r for r in read_metrics(run_dir)
            if ("step" in r and "event" not in r and step is not None and r.get("global_step", 0) <= step)
            or ("step" not in r or "event" in r) and r.get("epoch", 0) <= epoch]
    atomic_write_text(Path(run_dir) / METRICS_FILE, "".join(json.dumps(json_safe(r)) + "\n" for r in rows + [marker]))


def epoch_rows(history: list[dict]) -> list[dict]:
    """The per-epoch rows of a metrics history, one per epoch (the last wins after a resume).

    Marker rows ({"event": "resume" | "fork" | "restart", "epoch": ...}) are not epochs, nor are
    mid-epoch validation rows (val_every: they carry a "step" key).
    """
    by_epoch = {}
    for row in history:
        if "epoch" in row and "event" not in row and "step" not in row:
            by_epoch[row["epoch"]] = row
    return [by_epoch[e] for e in sorted(by_epoch)]
