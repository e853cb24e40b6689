"""Running out of memory inside torch, said as what to lower, not as a bug in trainlab.

torch reports it three ways: torch.OutOfMemoryError (CUDA, and MPS), a RuntimeError from the
CPU allocator ("DefaultCPUAllocator: can't allocate memory", "not enough memory"), and
Python's MemoryError. A fresh run that fails so before its first checkpoint leaves no folder
behind: the same command, with a smaller batch, then starts cleanly instead of being refused
for the folder's (other) config.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from trainlab.errors import TrainlabError
from trainlab.store import runs

log = logging.getLogger("trainlab")

_OOM_TYPES = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                               getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
_OOM_TEXT = ("can't allocate memory", "not enough memory", "out of memory", "failed to allocate memory")


def is_out_of_memory(e: BaseException) -> bool:
    """`e`, or an error it was raised while handling: torch.save into memory that fails with a
    MemoryError surfaces as its zip writer's own RuntimeError ("unexpected pos")."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, MemoryError) or (_OOM_TYPES and isinstance(e, _OOM_TYPES)):
            return True
        if isinstance(e, RuntimeError) and any(t in str(e).lower() for t in _OOM_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def out_of_memory_error(model, batch, where: str, kept: str) -> TrainlabError:
    """The one sentence: what ran out, with what, and what to lower (by name, with a value)."""
    smaller = f" (e.g. {batch // 2})" if isinstance(batch, int) and batch > 1 else ""
    return TrainlabError(
        f"out of memory while {where} {model} at batch size {batch}: lower --batch-size{smaller}, the "
        "model's width (--model-kwarg) or the image size (--image-size), then run the command again; "
        f"{kept}")


def holds_checkpoint(run_dir: Path) -> bool:
    """Whether a run folder holds anything worth keeping: a checkpoint, model.pt or results."""

    ckpts = run_dir / runs.CHECKPOINTS
    return ((run_dir / runs.WEIGHTS_FILE).exists() or (run_dir / runs.RESULTS_FILE).exists()
            or (ckpts.is_dir() and any(p.suffix == ".pt" for p in ckpts.iterdir())))


def discard_unstarted(run_dir: Path | None) -> bool:
    """Remove a run folder this process created when it holds no checkpoint yet (its config,
    meta and an epoch's partial rows are all it has); a folder with a checkpoint is kept."""
    if run_dir is None or not run_dir.is_dir() or run_dir.is_symlink() or holds_checkpoint(run_dir):
        return False
    try:
        shutil.rmtree(run_dir)
    except OSError as e:
        log.warning("could not remove the unstarted run folder %s (%s); remove it by hand", run_dir, e.strerror)
        return False
    return True
