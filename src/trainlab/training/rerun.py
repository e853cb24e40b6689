"""The same command run again (a requeued job, a restarted kernel, torchrun restarting its
workers): a named run folder that already holds this run is continued from its newest
verified checkpoint, a finished one is reported and left alone, a different config is
refused by name, and `restart` starts over with the old folder kept aside, never deleted.
The policy is the config's `rerun` ("resume" or "refuse"); rank 0 decides, every rank follows."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from trainlab.config import Config
from trainlab.errors import ConfigError, TrainlabError
from trainlab.store import runs
from trainlab.training import distributed
from trainlab.training.choose import read_run_config
from trainlab.training.overrides import changeable_differences, fixed_differences
from trainlab.training.result import TrainResult

log = logging.getLogger("trainlab")


def elastic_name(cfg: Config) -> Config:
    """Under torchrun with restarts, an unnamed run is named after the launch (the same id in
    every restart), so restarted workers find the run their predecessors began."""
    if cfg.name is None and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0:
        run_id = "".join(c for c in os.environ.get("TORCHELASTIC_RUN_ID", "") if c.isalnum())[:12]
        if run_id:
            return cfg.with_changes(name=f"{cfg.model.replace(':', '-').replace('.', '-')}-{cfg.recipe}-{run_id}")
    return cfg


def decide(cfg: Config, restart: bool = False) -> dict:
    """{"action": "new" | "resume" | "finished", ...}, the same on every rank."""
    return distributed.rank0_decides(lambda: _decide(cfg, restart), distributed.context())


def _decide(cfg: Config, restart: bool) -> dict:
    if cfg.name is None:
        return {"action": "new"}
    path = Path(cfg.runs_dir) / cfg.name
    if not (path.exists() or path.is_symlink()):
        return {"action": "new"}
    if restart and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) == 0:
        # (a worker torchrun restarted runs the same command: it continues, it does not restart again)
        return {"action": "new", "set_aside": str(_set_aside(path))}
    if cfg.rerun == "refuse":
        return {"action": "new"}  # create_run_dir refuses the existing folder in one sentence
    if not (path / runs.CONFIG_FILE).is_file():
        _clear_unstarted(path)  # killed before its config was written: nothing in it to keep
        return {"action": "new"}
    saved, current = read_run_config(path), cfg.to_dict()
    differ = fixed_differences(saved, current) + [f"{k}: {a!r} -> {b!r}"
                                                  for k, (a, b) in changeable_differences(saved, current).items()]
    if differ:
        raise ConfigError(f"run folder {path} holds a run with another config ({'; '.join(differ)}): running "
                          "a command again continues its run only with the same config; choose another "
                          f"--name, pass --restart to start over (the old folder is kept aside), or change "
                          f"it deliberately with trainlab resume {path} --allow-changes")
    results = path / runs.RESULTS_FILE
    if results.is_file():
        done = runs.read_results(results)  # type-checked: a damaged file is named, not a crash
        if done.get("stopped") == "early-stop" or done.get("epochs", 0) >= cfg.train.epochs:
            return {"action": "finished", "results": done}
    if saved.get("epochs") != current.get("epochs"):  # the plan changed: never silently
        raise ConfigError(f"run folder {path} holds a run planned for {saved.get('epochs')} epochs, and this "
                          f"command asks for {current.get('epochs')}: to train it further, trainlab resume "
                          f"{path} --epochs {current.get('epochs')} (its schedule, planned for "
                          f"{saved.get('epochs')}, continues at its final rate); to train "
                          f"{current.get('epochs')} epochs on a new schedule, pass --restart (the old folder "
                          "is kept aside) or choose another --name")
    return {"action": "resume", "path": str(path)}


def _clear_unstarted(path: Path) -> None:
    """A run folder that holds only its lock (and temporary files): its run was killed before it
    wrote anything, so the same command starts it; a folder with anything else is never touched
    (create_run_dir then refuses it)."""
    if path.is_symlink() or not path.is_dir():
        return
    names = [p.name for p in path.iterdir()]
    if not all(n == runs.LOCK_FILE or (n.startswith(".") and ".tmp-" in n) for n in names):
        return
    with runs.RunLock(path):
        for n in names:
            if n != runs.LOCK_FILE:
                (path / n).unlink()
        (path / runs.LOCK_FILE).unlink()
        path.rmdir()
    log.info("re-run: %s held no run yet (killed before it started): starting it", path)


def _set_aside(path: Path) -> Path:
    """The old run folder renamed beside itself, under its lock (a live run is never moved)."""
    aside = path.with_name(f"{path.name}-before-restart-{time.strftime('%Y%m%d-%H%M%S')}")
    with runs.RunLock(path):
        if aside.exists():
            raise TrainlabError(f"{aside} already exists: wait a second and run the command again")
        os.rename(path, aside)
    log.warning("restart: %s moved aside to %s; training it from the start", path, aside)
    return aside


def finished_result(cfg: Config, decision: dict):
    """The TrainResult of a run that is already done, read from its folder."""
    path = Path(cfg.runs_dir) / cfg.name
    results = decision["results"]
    history = runs.epoch_rows(runs.read_metrics(path))
    log.warning("run %s is finished (%s epochs%s): nothing to train; trainlab resume %s --epochs N "
                "trains it further", path, results.get("epochs"),
                ", stopped early" if results.get("stopped") == "early-stop" else "", path)
    return TrainResult(path, cfg, history, results.get("test", {}), results.get("device", ""), results)
