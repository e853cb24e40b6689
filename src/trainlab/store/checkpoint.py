"""Checkpoints: one plain dict per file, written atomically, hashed, and only ever loaded
with `weights_only=True`.

"Architecture in code, values in file": a checkpoint names its model (spec = name + kwargs)
and holds state_dicts, tensors, numbers, strings, lists and dicts only, never a pickled
class. Each save goes: serialize in memory -> check free space -> temporary file in the
same folder -> flush + fsync -> atomic rename -> folder fsync -> manifest entry (sha256,
epoch, metric), the manifest itself written the same way. A file missing from the manifest
or failing its hash is "unverified": resuming falls back to the newest good one.

Here: the write path (unwrap, plain values, serialize, save) and the weights API
(save_weights / load_weights). Loading is store.safeload, the format and fields
store.schema, the manifest and the checkpoint folder store.manifest.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from trainlab._version import __version__
from trainlab.errors import StoreError, TrainlabError
from trainlab.store.atomic import atomic_write_bytes
from trainlab.store.safeload import CheckpointError, safe_load
from trainlab.store.schema import FORMAT, FORMAT_VERSION

_PREFIXES = ("_orig_mod.", "module.")  # added by torch.compile and DDP wrappers


# ---------------------------------------------------------------- writing

def check_free_space(folder: Path, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < need + (16 << 20):  # keep a margin for the manifest and logs
        raise StoreError(f"not enough free disk space in {folder} to save a checkpoint: "
                              f"need {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free; free some "
                              "space (or use --runs-dir elsewhere) and resume; earlier files are intact")


def serialize(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside torch.compile / DDP wrappers, so saved keys carry no prefixes."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _cpu(obj):
    """Tensors moved to the CPU, so files are device-neutral (map_location puts them back)."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


_PLAIN_TYPES = (str, int, float, bool, type(None))


def to_plain(obj, what: str):
    """`obj` as values weights_only loading accepts (tensors, numbers, strings, lists, dicts
    with string keys); numpy scalars become Python numbers. Anything else is refused now, in
    one sentence, not found when a resume cannot load the file."""
    if torch.is_tensor(obj) or type(obj) in _PLAIN_TYPES:  # exact: np.float64 subclasses float
        return obj
    if isinstance(obj, dict):
        bad = next((k for k in obj if not isinstance(k, str)), None)
        if bad is not None:
            raise TrainlabError(f"{what} has the key {bad!r}: checkpoint keys must be strings")
        return {k: to_plain(v, f"{what}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, what) for v in obj]
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    for base in (bool, int, float, str):  # a subclass of one (an IntEnum, say): its plain value
        if isinstance(obj, base):
            return base(obj)
    raise TrainlabError(f"{what} holds a {type(obj).__module__}.{type(obj).__qualname__}: a checkpoint keeps "
                        "only tensors, numbers, strings, lists and dicts (weights_only loading refuses "
                        "other objects); convert it, e.g. float(x) or torch.as_tensor(x)")


def make_checkpoint(model, *, model_spec: dict, **fields) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "trainlab_version": __version__,
            "torch_version": str(torch.__version__), "model_spec": model_spec,
            "model": _cpu(unwrap(model).state_dict()), **_cpu(fields)}


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> str:
    """Write one checkpoint atomically (no manifest); returns its sha256."""
    path = Path(path)
    data = serialize(ckpt)
    check_free_space(path.parent, len(data))
    atomic_write_bytes(path, data)
    return sha256_bytes(data)

# ---------------------------------------------------------------- weights only

def strip_prefixes(state_dict: dict) -> dict:
    out = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def check_compatible(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Missing and unexpected keys and each shape mismatch, by name, in one error."""
    own = unwrap(model).state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and torch.is_tensor(state_dict[k])
              and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"shape mismatches: {'; '.join(shapes[:8])}")
        raise CheckpointError(f"{source} does not fit this model (another architecture?): "
                              + " | ".join(parts))


def save_weights(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Save the model's state_dict (atomically) and check the file reads back equal."""
    path = Path(path)
    state = _cpu(unwrap(model).state_dict())
    save_checkpoint(path, state)
    back = safe_load(path)
    if set(back) != set(state) or not all(torch.equal(back[k], state[k]) for k in state):
        raise CheckpointError(f"{path}: the saved weights do not read back equal; the disk may be failing")
    return path


def load_weights(model: torch.nn.Module, path: str | os.PathLike, map_location=None) -> torch.nn.Module:
    """Load a state_dict (or a trainlab checkpoint's model) into `model`, checked by name and shape."""
    if map_location is None:
        params = list(model.parameters())
        map_location = params[0].device if params else "cpu"
    obj = safe_load(path, map_location)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path} is not a state_dict (a dict of tensors)")
    state = strip_prefixes(obj)
    check_compatible(model, state, str(path))
    unwrap(model).load_state_dict(state)
    return model
