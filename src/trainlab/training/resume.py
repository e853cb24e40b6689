"""Resuming a run: choose the checkpoint (newest usable, or --from), decide what may change
(free, changeable with --allow-changes, fixed), restore, and continue in place or fork into
a new folder; with no usable checkpoint, start over without losing a file."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from trainlab.config import Config, resolve
from trainlab.data import Dataset, fingerprint_changes
from trainlab.errors import ConfigError, TrainlabError
from trainlab.store import runs
from trainlab.store.manifest import CheckpointDir
from trainlab.training import distributed, memory, runtime
from trainlab.training.callbacks import Callback
from trainlab.training.choose import choose_checkpoint, damaged, read_run_config, usable_checkpoint
from trainlab.training.overrides import RESUME_CHANGEABLE_KEYS, apply_overrides, changes_to_apply, saved_value
from trainlab.training.result import TrainResult, resume_point
from trainlab.training.session import Session

log = logging.getLogger("trainlab")

CHECKPOINTS = runs.CHECKPOINTS

@dataclass
class _Request:
    """What the caller asked of a resume (the arguments of resume(), checked)."""
    epochs: int | None
    into: Path | None
    reset_optimizer: bool
    allow_changes: bool
    allow_data_change: bool
    data: Dataset | None
    overrides: dict
    progress: bool | None
    allow_import: tuple[str, ...]
    from_checkpoint: str | None
    callbacks: tuple
    reason: str = "resume"
    model: object = None  # train(model=...) runs: the caller's model again
    transforms: tuple = ()  # train(transforms=...) runs: the caller's batch transforms again


def resume(run_dir: str | Path, *, epochs: int | None = None, into: str | Path | None = None,
           reset_optimizer: bool = False, allow_changes: bool = False, data: Dataset | None = None,
           overrides: dict | None = None, progress: bool | None = None,
           allow_import: tuple[str, ...] = (), from_checkpoint: str | None = None,
           allow_data_change: bool | None = None, callbacks: list[Callback] = (),
           reason: str = "resume", model=None, transforms=()) -> TrainResult:
    """Continue a run from its newest verified checkpoint (or fork it `into` a new folder).

    Overrides (e.g. {"lr": 1e-4}) take effect from the next step, are recorded in
    metrics.jsonl, or are refused by name. A model named by import path in the run's files
    is built only if its module is in `allow_import`. `from_checkpoint` (e.g. "best.pt")
    rewinds to that checkpoint instead of the newest; newer ones are set aside, not deleted.
    `allow_data_change` (default: `allow_changes`) accepts data that differs from the
    checkpoint's; the CLI waives it only for an explicit --allow-changes. `callbacks` are the
    run's own (pass the same ones as to train()): each gets its state back from the checkpoint.
    `reason` is recorded in the resume event when it is not a plain resume (e.g. "rerun").
    `model`: a run trained on a model given in memory (instance:NAME) needs it again here;
    `transforms`: the batch transforms given to train(), again (they are code: no file holds them)."""
    run_dir = Path(run_dir)
    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise TrainlabError(f"{run_dir} holds no {runs.CONFIG_FILE}: it is not a trainlab run folder, "
                            "or its run was stopped before it started; start it again with trainlab train")
    req = _Request(epochs, Path(into) if into is not None else None, reset_optimizer, allow_changes,
                   allow_changes if allow_data_change is None else allow_data_change, data, dict(overrides or {}),
                   progress, tuple(allow_import or ()), from_checkpoint, tuple(callbacks), reason, model,
                   tuple(transforms or ()))
    lock = runs.RunLock(run_dir).acquire() if into is None and distributed.context().is_main else None
    try:
        with runtime.library_output(progress, _quiet(run_dir)):
            return _resume_locked(run_dir, req, lock)
    except (RuntimeError, MemoryError) as e:
        if not memory.is_out_of_memory(e):
            raise
        saved = _saved_config(run_dir)
        raise memory.out_of_memory_error(saved.get("model", "the model"), saved.get("batch_size", "?"), "resuming",
                                         "the run's checkpoints are intact") from None
    finally:
        if lock is not None:
            lock.release()


def _saved_config(run_dir: Path) -> dict:
    try:
        return read_run_config(run_dir)
    except TrainlabError:
        return {}


def _quiet(run_dir: Path) -> bool:
    try:
        return bool(read_run_config(run_dir).get("quiet"))
    except TrainlabError:  # a damaged config.toml is reported where it is used
        return False


def _choose(run_dir: Path, ckpt_dir: CheckpointDir, folder_cfg: dict, lock, req: _Request) -> tuple[str | None, dict | None]:
    """(name, checkpoint): rank 0 alone cleans, repairs, chooses and loads (once); the other ranks
    follow its choice by name (under DDP a rank deciding on its own could restart over
    checkpoints rank 0 is recovering) and load it themselves (None)."""
    chosen: dict = {}

    def choose() -> dict:
        chosen.update(choose_checkpoint(run_dir, ckpt_dir, folder_cfg, lock, req.into, req.from_checkpoint))
        return {"name": chosen["name"]}  # the name alone crosses to the other ranks

    name = distributed.rank0_decides(choose, distributed.context())["name"]
    return name, chosen.get("ckpt")


def _resume_locked(run_dir: Path, req: _Request, lock) -> TrainResult:
    ckpt_dir = CheckpointDir(run_dir / CHECKPOINTS)
    folder_cfg = read_run_config(run_dir)
    name, ckpt = _choose(run_dir, ckpt_dir, folder_cfg, lock, req)
    if name is None:
        return _restart(run_dir, folder_cfg, req)
    path = run_dir / CHECKPOINTS / name
    if ckpt is None:  # a rank other than 0
        ckpt = usable_checkpoint(path, run_dir, folder_cfg)
    saved_cfg = ckpt["config"]
    overrides, allow_changes = req.overrides, req.allow_changes
    # an override recorded in config.toml whose first save never came (a kill): applied again
    pending = {k: folder_cfg[k] for k in RESUME_CHANGEABLE_KEYS
               if k in folder_cfg and folder_cfg[k] != saved_value(saved_cfg, k) and k not in overrides}
    if pending:
        log.warning("resume: re-applying the override(s) recorded in config.toml: %s",
                    ", ".join(f"{k} = {v!r}" for k, v in sorted(pending.items())))
        overrides, allow_changes = {**pending, **overrides}, True
    values = {**saved_cfg, **overrides}
    if req.epochs is not None:
        values["epochs"] = req.epochs
    if req.into is not None:
        values["runs_dir"], values["name"] = str(req.into.parent), req.into.name
    cfg = resolve(values, origin="resume")
    if cfg.train.epochs < ckpt["epoch"]:
        raise ConfigError(f"epochs = {cfg.train.epochs} is less than the {ckpt['epoch']} epochs already trained")
    changes = changes_to_apply(saved_cfg, cfg, allow_changes, "resume")
    threads = cfg.threads or torch.get_num_threads()
    if threads != ckpt.get("threads"):
        log.warning("resume: %d threads now vs %s when saved: results will not be bitwise equal "
                    "to an uninterrupted run", threads, ckpt.get("threads"))
    session = Session(cfg, req.data, progress=req.progress, schedule_epochs=ckpt["schedule"]["epochs"],
                      allow_import=req.allow_import, callbacks=req.callbacks, weights_bound=ckpt["model"],
                      model=req.model, transforms=req.transforms)
    _check_continues(session, ckpt, path, name, req)
    session.load_state_dict(ckpt, reset_optimizer=req.reset_optimizer, source=str(path))
    apply_overrides(session, {} if req.reset_optimizer else changes)  # a fresh optimizer has the new values
    _record(session, run_dir, ckpt, name, cfg, changes, lock, req,
            resumed={"from": name, "epoch": ckpt["epoch"], "lr": cfg.train.lr})
    _record_extension(session, folder_cfg, ckpt, cfg, req)
    log.info("resume: %s from %s at %s%s", session.run_dir, name, resume_point(ckpt["epoch"], ckpt.get("step", 0)),
             " with a fresh optimizer" if req.reset_optimizer else "")
    try:
        return session.run()
    finally:
        session.release()  # in place, the lock is resume()'s: releasing twice is harmless


def _check_continues(session: Session, ckpt: dict, path: Path, name: str, req: _Request) -> None:
    """The session built now is the one the checkpoint continues: same data, model, and (mid-epoch)
    the same number of processes."""
    changed = fingerprint_changes(ckpt.get("fingerprint"), session.data.fingerprint())
    if changed and not req.allow_data_change:
        raise ConfigError(f"the data differs from the checkpoint's ({'; '.join(changed)}); "
                          "pass --allow-changes to resume on it anyway")
    if ckpt["model_spec"] != session.spec:
        raise TrainlabError(f"{path}: its model ({ckpt['model_spec']}) differs from the one this run "
                            f"builds ({session.spec}); it was not used")
    saved_world = ckpt.get("world_size", 1)
    if saved_world != session.dist.world_size:
        if ckpt.get("step"):
            raise ConfigError(f"{name} was saved in the middle of an epoch by {saved_world} process(es); "
                              f"resume it with the same number of processes, not {session.dist.world_size}")
        log.info("resume: world size %d -> %d (the batch size is global: same steps, same schedule)",
                 saved_world, session.dist.world_size)


def _record_extension(session: Session, folder_cfg: dict, ckpt: dict, cfg: Config, req: _Request) -> None:
    """A run trained past (or short of) its planned epochs: config.toml says the new count, and
    the line says what the schedule does beyond its plan."""
    planned = ckpt["schedule"]["epochs"]
    if cfg.train.epochs > planned:
        log.warning("resume: %d epochs, past the %d its schedule was planned for: epochs %d-%d continue at "
                    "the schedule's final rate", cfg.train.epochs, planned, planned + 1, cfg.train.epochs)
    if req.into is None and session.dist.is_main and folder_cfg.get("epochs") != cfg.train.epochs:
        runs.write_config(run_dir := session.run_dir, cfg)  # the folder says what it now trains to
        log.info("resume: %s now trains to %d epochs (config.toml updated)", run_dir, cfg.train.epochs)


def _record(session: Session, run_dir: Path, ckpt: dict, name: str, cfg: Config, changes: dict, lock,
            req: _Request, resumed: dict) -> None:
    """metrics.jsonl (and config.toml when something changed) say what happened: in place, the
    rows after the checkpoint go and a resume event is appended; a fork starts a new folder."""
    event = {"event": "override", "epoch": ckpt["epoch"],
             "changes": {k: [a, b] for k, (a, b) in changes.items()}} if changes else None
    if req.into is None:
        session.attach(run_dir, lock, resumed)  # the lock is resume()'s: it releases it
        if session.dist.is_main:
            runs.truncate_metrics(run_dir, ckpt["epoch"], {
                # epoch: epochs complete, as every row counts; at: the words the console printed
                "event": "resume", "from": name, "epoch": ckpt["epoch"], "step": ckpt.get("step", 0),
                "at": resume_point(ckpt["epoch"], ckpt.get("step", 0)),
                "global_step": ckpt["global_step"], "world_size": session.dist.world_size,
                **({"by": req.reason} if req.reason != "resume" else {})})
            if changes:
                runs.write_config(run_dir, cfg)  # the folder's config says what runs from now on
                runs.append_metrics(run_dir, event)
        return
    session.start_run_dir({"parent": {"run": str(run_dir), "checkpoint": name, "epoch": ckpt["epoch"],
                                      "reset_optimizer": req.reset_optimizer}}, resumed=resumed)
    if session.dist.is_main:
        for row in session.state.history:
            runs.append_metrics(session.run_dir, row)
        runs.append_metrics(session.run_dir, {"event": "fork", "from": str(run_dir), "epoch": ckpt["epoch"],
                                              "reset_optimizer": req.reset_optimizer})
        if changes:
            runs.append_metrics(session.run_dir, event)


def _restart(run_dir: Path, values: dict, req: _Request) -> TrainResult:
    """No verified checkpoint (killed during the very first save): train again in place.
    Files that do not verify are moved aside, never overwritten; overrides apply as on resume."""
    try:
        saved = resolve(values).to_dict()
    except ConfigError as e:
        raise damaged(run_dir / runs.CONFIG_FILE, e) from None
    merged = {**values, **req.overrides}
    if req.epochs is not None:
        merged["epochs"] = req.epochs
    cfg = resolve(merged, origin="resume")
    changes = changes_to_apply(saved, cfg, req.allow_changes, "resume")
    # built first: missing data or a bad model ends here, before any file is moved
    session = Session(cfg, req.data, progress=req.progress, allow_import=req.allow_import, callbacks=req.callbacks,
                      model=req.model, transforms=req.transforms)
    log.warning("resume: %s has no verified checkpoint; starting the run over from epoch 0", run_dir)
    session.attach(run_dir)  # the lock stays resume()'s
    if session.dist.is_main:  # rank 0 alone moves files
        CheckpointDir(run_dir / CHECKPOINTS).set_aside_unusable()
        old = run_dir / runs.METRICS_FILE
        if old.is_file() and old.stat().st_size:  # earlier rows kept aside, not erased
            os.replace(old, run_dir / f"metrics-before-restart-{int(os.path.getmtime(old))}.jsonl")
        runs.write_config(run_dir, cfg)
        runs.truncate_metrics(run_dir, 0, {"event": "restart", "epoch": 0})
        if changes:
            runs.append_metrics(run_dir, {"event": "override", "epoch": 0,
                                          "changes": {k: [a, b] for k, (a, b) in changes.items()}})
    try:
        return session.run()
    finally:
        session.release()
