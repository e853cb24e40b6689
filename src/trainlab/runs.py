"""The run folder: runs/<name>/ with config.toml, meta.json, metrics.jsonl, results.

An existing run folder is never overwritten: a name the user chose is refused if taken,
a generated name gets a numeric suffix (and the log says so).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import __version__
from .config import Config, dumps_toml
from .errors import ConfigError, TrainlabError

log = logging.getLogger("trainlab")

CONFIG_FILE = "config.toml"
META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"


def create_run_dir(cfg: Config) -> Path:
    root = Path(cfg.runs_dir)
    if cfg.name:
        path = root / cfg.name
        if path.exists():
            raise ConfigError(f"run folder {path} already exists and is never overwritten: choose "
                              "another --name, or continue it with `trainlab resume`")
        path.mkdir(parents=True)
        return path
    base = f"{cfg.model.replace(':', '-').replace('.', '-')}-{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1000):
        path = root / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir(parents=True)
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
    from .metrics import json_safe  # strict JSON: NaN becomes null

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=2) + "\n")
    os.replace(tmp, path)


def write_run_header(run_dir: Path, cfg: Config, extra_meta: dict) -> None:
    tmp = run_dir / (CONFIG_FILE + ".tmp")  # whole or absent: resume reads it
    tmp.write_text(dumps_toml(cfg.to_dict()))
    os.replace(tmp, run_dir / CONFIG_FILE)
    meta = {"command": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **environment(), **extra_meta}
    write_json(run_dir / META_FILE, meta)


def append_metrics(run_dir: Path, row: dict) -> None:
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(run_dir: Path, epoch: int, marker: dict) -> None:
    """Cut metrics.jsonl back to `epoch` (rows a checkpoint does not cover) and mark the resume."""
    rows = [r for r in read_metrics(run_dir) if r.get("epoch", 0) <= epoch]
    text = "".join(json.dumps(r) + "\n" for r in rows + [marker])
    tmp = Path(run_dir) / (METRICS_FILE + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, Path(run_dir) / METRICS_FILE)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a killed process: ignore it
    return rows


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TrainlabError(f"{path} not found: is {Path(path).parent} a trainlab run folder?") from None
    except json.JSONDecodeError as e:
        raise TrainlabError(f"{path} is not valid JSON ({e})") from None
