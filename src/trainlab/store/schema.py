"""What a checkpoint file must be: trainlab's format and a version this code reads, and every
field a caller will use present and of the right kind (the one schema check at load)."""

from __future__ import annotations

import math
import os

import torch

from trainlab.models import check_spec
from trainlab.store.safeload import CheckpointError, safe_load

FORMAT = "trainlab.checkpoint"
FORMAT_VERSION = 1


def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict:
    obj = safe_load(path, map_location)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a trainlab checkpoint (a plain state_dict? load it "
                              "with trainlab.store.checkpoint.load_weights)")
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is not one this "
                              f"trainlab reads (1..{FORMAT_VERSION}); upgrade trainlab")
    return obj


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _numbers(v) -> bool:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return True
    return isinstance(v, (list, tuple)) and 0 < len(v) <= 4096 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


# field -> (check, what it must be); the model fields are what inference needs
_MODEL_FIELDS = {
    "model": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and torch.is_tensor(t)
                                                    for k, t in v.items()), "a state_dict (names -> tensors)"),
    "mean": (_numbers, "a number or a list of numbers"),
    "std": (_numbers, "a number or a list of numbers"),
    "config": (lambda v: isinstance(v, dict) and isinstance(v.get("dataset"), str),
               "a table of config values naming its data set"),
}
_OPTIONAL_FIELDS = {
    "classes": (lambda v: isinstance(v, list) and len(v) <= 1_000_000 and all(isinstance(c, str) for c in v),
                "a list of class names"),
    "ema": (lambda v: v is None or isinstance(v, dict), "an EMA state_dict"),
    # each callback's own state under its key (checkpoints before callbacks have none)
    "callbacks": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(d, dict)
                                                        for k, d in v.items()), "a table of callback states"),
}
_TRAINING_FIELDS = {
    "optimizer": (lambda v: isinstance(v, dict) and "param_groups" in v, "an optimizer state_dict"),
    "scheduler": (lambda v: isinstance(v, dict) and _is_int(v.get("last_epoch")), "a scheduler state_dict"),
    "epoch": (lambda v: _is_int(v) and v >= 0, "an epoch count"),
    "global_step": (lambda v: _is_int(v) and v >= 0, "a step count"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of epoch rows"),
    "early_stopping": (lambda v: isinstance(v, dict) and {"best", "best_epoch", "counter"} <= set(v),
                       "early-stopping state"),
    "rng": (lambda v: isinstance(v, dict) and torch.is_tensor(v.get("torch")) and isinstance(v.get("numpy"), dict)
            and isinstance(v.get("python"), list) and len(v["python"]) == 3, "the RNG states"),
    "schedule": (lambda v: isinstance(v, dict) and _is_int(v.get("epochs")) and v["epochs"] > 0,
                 "the planned schedule"),
}


def check_checkpoint(ckpt: dict, path, training: bool = False) -> dict:
    """The one schema check at load: every field the caller will use is present and of the
    right kind, so a hostile or damaged file ends in one sentence, not a KeyError later."""
    check_spec(ckpt.get("model_spec"), str(path))
    wanted = {**_MODEL_FIELDS, **(_TRAINING_FIELDS if training else {})}
    for name, (ok, what) in wanted.items():
        if name not in ckpt:
            raise CheckpointError(f"{path} has no {name!r} field: it is not a complete trainlab "
                                  f"{'training ' if training else ''}checkpoint")
        if not ok(ckpt[name]):
            raise CheckpointError(f"{path}: its {name!r} field is not {what}: the file is damaged or forged")
    for name, (ok, what) in _OPTIONAL_FIELDS.items():
        if name in ckpt and not ok(ckpt[name]):
            raise CheckpointError(f"{path}: its {name!r} field is not {what}: the file is damaged or forged")
    channels, height, width = ckpt["model_spec"]["input_shape"]
    for name in ("mean", "std"):  # one finite value per input channel; a std above 0
        v = ckpt[name]
        values = list(v) if isinstance(v, (list, tuple)) else [v]
        if len(values) != channels or not all(math.isfinite(x) and (name == "mean" or x > 0) for x in values):
            raise CheckpointError(f"{path}: its {name!r} is not {'a finite' if name == 'mean' else 'a positive'} "
                                  f"value per input channel ({channels}): the file is damaged or forged")
    size = ckpt["config"].get("image_size")
    if size is not None and not (_is_int(size) and size == height == width):
        raise CheckpointError(f"{path}: its image_size {size!r} is not its model's input size "
                              f"{height}x{width}: the file is damaged or forged")
    if "classes" in ckpt and len(ckpt["classes"]) != ckpt["model_spec"]["num_classes"]:
        raise CheckpointError(f"{path}: it names {len(ckpt['classes'])} classes but its model has "
                              f"{ckpt['model_spec']['num_classes']} outputs: the file is damaged or forged")
    return ckpt
