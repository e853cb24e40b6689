"""Checkpoints: one plain dict per file, written atomically, always loaded with weights_only=True.

"Architecture in code, values in file": a checkpoint names its model (spec = name + kwargs)
and holds state_dicts, numbers, strings, lists and dicts only, never a pickled class.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import __version__
from .errors import TrainlabError

FORMAT = "trainlab.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(TrainlabError):
    pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform (e.g. Windows)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync it, rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside torch.compile / DDP wrappers, so keys carry no prefixes."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def make_checkpoint(model, *, model_spec: dict, **fields) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "trainlab_version": __version__,
            "torch_version": torch.__version__, "model_spec": model_spec,
            "model": unwrap(model).state_dict(), **fields}


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> None:
    atomic_write(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for bad files
        raise CheckpointError(f"{path}: cannot be loaded safely ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a trainlab checkpoint")
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {obj['format_version']} is newer "
                              f"than this trainlab understands ({FORMAT_VERSION}); upgrade trainlab")
    return obj
