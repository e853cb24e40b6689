"""Choosing the checkpoint a resume continues: the newest that verifies, loads, passes the
schema and belongs to this run folder, or the one named with --from (newer ones set aside,
never deleted). Only the lock holder cleans temporaries and repairs the manifest."""

from __future__ import annotations

import logging
from pathlib import Path

from trainlab.config import load_toml, resolve
from trainlab.errors import ConfigError, TrainlabError
from trainlab.store import runs
from trainlab.store.atomic import remove_stale_temps
from trainlab.store.manifest import CheckpointDir, valid_name
from trainlab.store.schema import check_checkpoint, load_checkpoint
from trainlab.training.overrides import fixed_differences

log = logging.getLogger("trainlab")

CHECKPOINTS = runs.CHECKPOINTS


def damaged(path, e: Exception) -> TrainlabError:
    return TrainlabError(f"{path} is damaged or was not written by trainlab ({e}); it was not used")


def read_run_config(run_dir: Path) -> dict:
    try:
        return load_toml(run_dir / runs.CONFIG_FILE)
    except ConfigError as e:  # the run's own file, not the user's command line: exit 1
        raise damaged(run_dir / runs.CONFIG_FILE, e) from None


def choose_checkpoint(run_dir, ckpt_dir: CheckpointDir, folder_cfg: dict, lock, into, from_checkpoint) -> dict:
    """{"name": the checkpoint to resume from, "ckpt": it, loaded and checked} or {"name": None}:
    start over (no checkpoint verifies). Only the lock holder cleans temporaries and repairs the
    manifest."""
    if lock is not None:
        for folder in (run_dir, ckpt_dir.folder):
            remove_stale_temps(folder)  # left by a process killed mid-write
        ckpt_dir.recover()  # entries lost or malformed: rebuilt from the files that load
    if from_checkpoint is not None:
        loaded = {}
        name, _ = _rewind(ckpt_dir, from_checkpoint, in_place=into is None,
                          validate=lambda p: loaded.update(ckpt=usable_checkpoint(p, run_dir, folder_cfg)))
        return {"name": name, **loaded}
    candidates = ckpt_dir.verified()
    if not candidates:
        if into is not None:
            raise TrainlabError(f"{run_dir} has no verified checkpoint to fork from")
        return {"name": None}
    problems = []
    for name, _ in candidates:  # the newest that loads, passes the schema and belongs here
        try:
            return {"name": name, "ckpt": usable_checkpoint(run_dir / CHECKPOINTS / name, run_dir, folder_cfg)}
        except TrainlabError as e:
            problems.append(str(e))
            log.warning("resume: %s", e)
    # never restart over verified files: they are left exactly as they are
    raise TrainlabError(f"no checkpoint in {ckpt_dir.folder} can be used ({problems[0]}); nothing was changed")


def usable_checkpoint(path: Path, run_dir: Path, folder_cfg: dict) -> dict:
    ckpt = check_checkpoint(load_checkpoint(path, map_location="cpu"), path, training=True)
    try:
        resolve(ckpt["config"])
    except ConfigError as e:
        raise damaged(path, e) from None
    # the checkpoint must belong to this folder: another run's file (re-hashed) is refused
    foreign = fixed_differences(folder_cfg, ckpt["config"])
    if foreign:
        raise TrainlabError(f"{path} does not belong to the run in {run_dir}: its config.toml and the "
                            f"checkpoint disagree on {'; '.join(foreign)}; it was not used")
    return ckpt


def _rewind(ckpt_dir: CheckpointDir, name: str, in_place: bool, validate):
    """The named checkpoint, verified and usable (checked before anything moves); in place,
    checkpoints as new as it or newer are set aside, never deleted."""
    if not valid_name(name):
        raise ConfigError(f"--from {name!r} is not a checkpoint file name (e.g. best.pt, epoch-0003.pt)")
    problem = ckpt_dir.verify(name)
    if problem:
        raise TrainlabError(f"--from {name}: {ckpt_dir.folder / name} cannot be used ({problem})")
    validate(ckpt_dir.folder / name)
    entry = ckpt_dir.entry(name)
    if in_place:
        step = entry.get("global_step", -1)
        newer = [n for n in ckpt_dir.files_here() if n != name
                 and (ckpt_dir.entry(n) or {}).get("global_step", -1) >= step]
        if newer:
            ckpt_dir.set_aside(newer, "superseded")
    return name, entry
