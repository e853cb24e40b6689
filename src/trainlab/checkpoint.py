"""Checkpoints: one plain dict per file, written atomically, hashed, and only ever loaded
with `weights_only=True`.

"Architecture in code, values in file": a checkpoint names its model (spec = name + kwargs)
and holds state_dicts, tensors, numbers, strings, lists and dicts only, never a pickled
class. Each save goes: serialize in memory -> check free space -> temporary file in the
same folder -> flush + fsync -> atomic rename -> folder fsync -> manifest entry (sha256,
epoch, metric), the manifest itself written the same way. A file missing from the manifest
or failing its hash is "unverified": resuming falls back to the newest good one.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import torch

from . import __version__
from .errors import TrainlabError

log = logging.getLogger("trainlab")

FORMAT = "trainlab.checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_PREFIXES = ("_orig_mod.", "module.")  # added by torch.compile and DDP wrappers


class CheckpointError(TrainlabError):
    pass


# ---------------------------------------------------------------- writing

def _test_hook(phase: str, name: str) -> None:
    """Test-only: widen the write window and record where a kill landed (env-driven)."""
    logfile = os.environ.get("TRAINLAB_TEST_WRITE_LOG")
    if logfile:
        with open(logfile, "a") as f:
            f.write(f"{phase} {name}\n")
            f.flush()
            os.fsync(f.fileno())
    delay = float(os.environ.get("TRAINLAB_TEST_WRITE_DELAY", "0") or 0)
    if delay:
        time.sleep(delay)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # folders cannot be opened on this platform (Windows)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(f, data: bytes) -> None:
    """Write in 1 MiB chunks (a seam the full-disk test patches)."""
    view = memoryview(data)
    for i in range(0, len(view), 1 << 20):
        f.write(view[i:i + (1 << 20)])


def check_free_space(folder: Path, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < need + (16 << 20):  # keep a margin for the manifest and logs
        raise CheckpointError(f"not enough free disk space in {folder} to save a checkpoint: "
                              f"need {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free; free some "
                              "space (or use --runs-dir elsewhere) and resume; earlier files are intact")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` by `data` so that a crash leaves the old file or the new, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            _write_all(f, data[:half])
            f.flush()
            _test_hook("tmp-partial", path.name)  # a kill here leaves a half-written temp file
            _write_all(f, data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise CheckpointError(f"the disk filled up while writing {path}; the partial file was "
                                  "removed and earlier checkpoints are intact: free some space and "
                                  "resume") from None
        raise CheckpointError(f"could not write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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


# ---------------------------------------------------------------- safe loading

_MODULE_HINT = re.compile(r"^torch\.nn\.modules\.|\.nn\.|Module|Sequential|Net\b|Model\b")


def _unsafe_globals(path: Path) -> list[str]:
    """Classes/functions the file's pickle would import, found without unpickling it."""
    if not zipfile.is_zipfile(path):
        return []
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return []


def _plain_pickle_imports(path: Path) -> list[str] | None:
    """For a file that is not a zip archive: the names its pickle would import, read with
    pickletools (a disassembler: nothing is imported or run); None if it is not a pickle."""
    import pickletools

    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":  # protocol 4+: module and name pushed as strings
                    names.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:
        return None
    return names


def safe_load(path: str | os.PathLike, map_location=None):
    """torch.load(weights_only=True) with one clear sentence for each way a file can be bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    unsafe = _unsafe_globals(path)
    if unsafe:
        shown = ", ".join(sorted(unsafe)[:4]) + (" ..." if len(unsafe) > 4 else "")
        if any(_MODULE_HINT.search(g) for g in unsafe):
            raise CheckpointError(
                f"{path} holds a pickled model object ({shown}), probably from torch.save(model); "
                "trainlab never unpickles code. Save the weights instead: torch.save(model.state_dict(), "
                "path), or, for a file you trust and whose class you can import, convert it once with "
                "torch.save(torch.load(path, weights_only=False).state_dict(), new_path)")
        raise CheckpointError(f"{path} holds pickled Python objects ({shown}) that safe loading "
                              "refuses; it was not loaded (nothing in it was run)")
    with open(path, "rb") as f:
        head = f.read(4)
    torn = CheckpointError(f"{path} is torn or corrupt (not a complete checkpoint file): "
                           "use an earlier checkpoint")
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):  # the zip's directory comes last
        raise torn
    if head and head != b"PK\x03\x04":  # not torch's zip format: a plain pickle, or not a pickle
        imports = _plain_pickle_imports(path)
        if imports is None:
            raise CheckpointError(f"{path} is not a checkpoint file (neither a PyTorch zip archive "
                                  "nor a pickle): it is corrupt or in another format")
        if imports:
            shown = ", ".join(sorted(set(imports))[:4]) + (" ..." if len(set(imports)) > 4 else "")
            raise CheckpointError(f"{path} is a plain pickle that would import {shown}: safe loading "
                                  "refused it and nothing in it was run")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "zip archive" in msg or "central directory" in msg or isinstance(e, (EOFError, zipfile.BadZipFile)):
            raise torn from None
        if "Weights only load failed" in msg or "Unsupported global" in str(e) or "unpickl" in msg.lower():
            raise CheckpointError(f"{path} holds objects that safe loading refuses "
                                  "(weights_only=True); it was not loaded and nothing in it was run") from None
        raise CheckpointError(f"{path} cannot be loaded: {msg}") from None


def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict:
    obj = safe_load(path, map_location)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a trainlab checkpoint (a plain state_dict? load it "
                              "with trainlab.checkpoint.load_weights)")
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is not one this "
                              f"trainlab reads (1..{FORMAT_VERSION}); upgrade trainlab")
    return obj


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


# ---------------------------------------------------------------- the checkpoint folder

class CheckpointDir:
    """runs/<name>/checkpoints/: last.pt, best.pt, epoch-NNNN.pt and manifest.json."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def manifest(self) -> dict:
        try:
            data = json.loads(self.manifest_path.read_text())
            return data if isinstance(data.get("files"), dict) else {"files": {}}
        except (FileNotFoundError, json.JSONDecodeError):
            return {"files": {}}

    def save(self, name: str, ckpt: dict, **info) -> None:
        """Write `name` and record it (sha256 + info) in the manifest, both atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        data = serialize(ckpt)
        check_free_space(self.folder, len(data))
        atomic_write_bytes(self.folder / name, data)
        _test_hook("renamed", name)
        manifest = self.manifest()
        manifest["files"][name] = {"sha256": sha256_bytes(data), "bytes": len(data),
                                   "saved": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        atomic_write_bytes(self.manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
        _test_hook("manifest-done", name)

    def verify(self, name: str) -> str | None:
        """None if `name` is present and matches its manifest hash, else why not."""
        entry = self.manifest()["files"].get(name)
        path = self.folder / name
        if not path.is_file():
            return "missing"
        if entry is None:
            return "not in the manifest"
        if sha256_file(path) != entry["sha256"]:
            return "its sha256 does not match the manifest (torn or altered)"
        return None

    def remove(self, name: str) -> None:
        manifest = self.manifest()
        manifest["files"].pop(name, None)
        atomic_write_bytes(self.manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
        (self.folder / name).unlink(missing_ok=True)

    def newest_good(self) -> tuple[str, dict] | None:
        """(name, manifest entry) of the newest verified checkpoint; warns about bad ones."""
        files = self.manifest()["files"]
        names = sorted({p.name for p in self.folder.glob("*.pt")} | set(files),
                       key=lambda n: (files.get(n, {}).get("global_step", -1), n == "last.pt"), reverse=True)
        for name in names:
            problem = self.verify(name)
            if problem is None:
                return name, files[name]
            if problem != "missing":
                log.warning("checkpoint %s is unverified (%s): skipping it", self.folder / name, problem)
        return None

    def remove_stale_temps(self) -> None:
        """Delete temporary files of interrupted writes (call only with no writer running)."""
        for tmp in self.folder.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)

    def prune_periodic(self, keep: int) -> None:
        """Keep the `keep` newest epoch-NNNN.pt files (0 = keep all)."""
        if keep <= 0:
            return
        periodic = sorted((n for n in self.manifest()["files"] if re.fullmatch(r"epoch-\d+\.pt", n)),
                          key=lambda n: int(n[len("epoch-"):-len(".pt")]))  # epoch-10000 after epoch-9999
        for name in periodic[:-keep]:
            self.remove(name)
