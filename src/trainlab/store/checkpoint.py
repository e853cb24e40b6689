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

import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import torch

from trainlab._version import __version__
from trainlab.errors import StoreError, TrainlabError
from trainlab.store.atomic import (
    _test_hook,
    atomic_write_bytes,
    commit,
    discard,
    fsync_dir,
    remove_stale_temps,
    write_temp,
)

log = logging.getLogger("trainlab")

FORMAT = "trainlab.checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_PREFIXES = ("_orig_mod.", "module.")  # added by torch.compile and DDP wrappers


class CheckpointError(TrainlabError):
    pass


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
    import numpy as np

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


MAX_RECORDS = 100_000  # a checkpoint of a large model has a few thousand


def _check_zip_records(path: Path) -> None:
    """Refuse a zip whose records could inflate beyond the file: torch.save stores records
    uncompressed, so a compressed one (a zip bomb: 4 MB asking for 4 GiB) is not its work."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise CheckpointError(f"{path} is torn or corrupt (not a complete checkpoint file): "
                              "use an earlier checkpoint") from None
    if len(infos) > MAX_RECORDS:
        raise CheckpointError(f"{path} holds {len(infos)} records, far more than any checkpoint: refused")
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path} holds a compressed record ({info.filename}, {info.file_size:,} "
                                  "bytes inflated), which torch.save never writes: refused unread")
        if info.file_size > size:
            raise CheckpointError(f"{path} declares a record larger than the file itself: it is corrupt")


def safe_load(path: str | os.PathLike, map_location=None):
    """torch.load(weights_only=True) with one clear sentence for each way a file can be bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file" if not path.exists() else
                              f"{path} is not a regular file (a folder or device): refused")
    if zipfile.is_zipfile(path):
        _check_zip_records(path)
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
    except (MemoryError, RecursionError):
        raise CheckpointError(f"{path} is malformed (it would not fit in memory or nests too deeply)") from None
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
                              "with trainlab.store.checkpoint.load_weights)")
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


# ---------------------------------------------------------------- what a checkpoint must hold

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


def check_fields(ckpt: dict, path, training: bool = False) -> dict:
    """The one schema check at load: every field the caller will use is present and of the
    right kind, so a hostile or damaged file ends in one sentence, not a KeyError later."""
    from trainlab.models import check_spec

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


# ---------------------------------------------------------------- the checkpoint folder

def _stamp() -> str:
    """A time stamp that two set-asides in one second never share."""
    import secrets

    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


# Names in the manifest are plain file names inside checkpoints/: no folders, no "..",
# nothing absolute, nothing hidden, so no entry can point outside the run folder.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*\.pt")
_SHA = re.compile(r"[0-9a-f]{64}")
MAX_MANIFEST = 16 << 20


def valid_name(name) -> bool:
    return isinstance(name, str) and len(name) <= 100 and _NAME.fullmatch(name) is not None


def _valid_entry(entry, nested: bool = False) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not _SHA.fullmatch(entry["sha256"]):
        return False
    for key in ("epoch", "global_step", "bytes"):
        if key in entry and not (_is_int(entry[key]) and entry[key] >= 0):
            return False
    prev = entry.get("replaces")
    return prev is None or (not nested and _valid_entry(prev, nested=True))


class CheckpointDir:
    """runs/<name>/checkpoints/: last.pt, best.pt, epoch-NNNN.pt and manifest.json.

    A save is three steps, each atomic: the manifest first records the new file's hash
    beside the one it replaces, then the file is renamed into place, then the manifest
    drops the old hash. A kill at any instant leaves the file matching one of the two
    hashes, so it verifies: at most the work since the previous save is lost."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def _refuse_link(self) -> None:
        if self.folder.is_symlink():
            raise StoreError(f"{self.folder} is a symbolic link: checkpoints are written only into a "
                             "real folder inside the run folder; replace the link by a folder")

    def read_manifest(self) -> tuple[dict, str | None, list]:
        """(valid entries, why the manifest as a whole is unusable or None, dropped names)."""
        try:
            if self.manifest_path.stat().st_size > MAX_MANIFEST:
                return {}, "larger than any manifest", []
            raw = self.manifest_path.read_bytes()
        except FileNotFoundError:
            return {}, "missing", []
        except OSError as e:  # a folder named manifest.json, no permission
            return {}, f"unreadable ({e.strerror})", []
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return {}, "not valid UTF-8 JSON", []
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            return {}, "not a manifest (no 'files' table)", []
        files, dropped = {}, []
        for name, entry in data["files"].items():
            (files.__setitem__(name, entry) if valid_name(name) and _valid_entry(entry) else dropped.append(name))
        return files, None, dropped

    def manifest(self) -> dict:
        return {"files": self.read_manifest()[0]}

    def _write_manifest(self, files: dict) -> None:
        atomic_write_bytes(self.manifest_path, (json.dumps({"files": files}, indent=1) + "\n").encode())

    def save(self, name: str, ckpt: dict, **info) -> None:
        """Write `name` and record it (sha256 + info) in the manifest, crash-safe at every instant."""
        if not valid_name(name):
            raise ValueError(f"checkpoint name {name!r} is not a plain file name")
        self._refuse_link()
        self.folder.mkdir(parents=True, exist_ok=True)
        data = serialize(ckpt)
        check_free_space(self.folder, len(data))
        files = self.read_manifest()[0]
        entry = {"sha256": sha256_bytes(data), "bytes": len(data),
                 "saved": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        # the entry the file on disk matches now (after an earlier kill, maybe the "replaces"
        # one): a second kill in the same window must still leave a verified file
        old = self._match(name, files)[0] if name in files else None
        files[name] = {**entry, "replaces": old}
        tmp = write_temp(self.folder / name, data)  # a full disk fails here, nothing changed yet
        try:
            self._write_manifest(files)  # 1: both hashes accepted
            _test_hook("pending", name, info.get("global_step"))
            commit(tmp, self.folder / name)  # 2: the new file in place
        except BaseException:
            discard(tmp)
            raise
        _test_hook("renamed", name, info.get("global_step"))
        files[name] = entry
        self._write_manifest(files)  # 3: only the new hash
        _test_hook("manifest-done", name, info.get("global_step"))

    def _match(self, name: str, files: dict) -> tuple[dict | None, str | None]:
        path = self.folder / name
        if not valid_name(name):
            return None, "not a plain checkpoint file name"
        if path.is_symlink():
            return None, "a symbolic link, not a checkpoint file"
        if not path.is_file():
            return None, "missing"
        entry = files.get(name)
        if entry is None:
            return None, "not in the manifest"
        digest = sha256_file(path)
        if digest == entry["sha256"]:
            return {k: v for k, v in entry.items() if k != "replaces"}, None
        prev = entry.get("replaces")
        if prev is not None and digest == prev["sha256"]:
            return prev, None  # killed between steps 1 and 2 of a save: the old file is whole
        return None, "its sha256 does not match the manifest (torn or altered)"

    def verify(self, name: str) -> str | None:
        """None if `name` is present and matches its manifest hash, else why not."""
        return self._match(name, self.read_manifest()[0])[1]

    def entry(self, name: str) -> dict | None:
        """The manifest entry that `name` matches now (None if it does not verify)."""
        return self._match(name, self.read_manifest()[0])[0]

    def resolve(self, name: str, files: dict) -> tuple[dict | None, str | None]:
        """(the entry `name` matches in `files`, None) or (None, why not): after a kill
        mid-save the file may match the "replaces" entry, which is what resume uses."""
        return self._match(name, files)

    def files_here(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.folder) if valid_name(e.name))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove(self, name: str) -> None:
        # the file first: a kill between the two leaves an entry for a missing file (skipped
        # quietly), never an orphaned file that is warned about on every resume
        if valid_name(name):
            (self.folder / name).unlink(missing_ok=True)
        files = self.read_manifest()[0]
        files.pop(name, None)
        self._write_manifest(files)

    def verified(self) -> list[tuple[str, dict]]:
        """(name, manifest entry) of every verified checkpoint, newest first; warns about bad ones."""
        files = self.read_manifest()[0]
        good = []
        for name in sorted(set(self.files_here()) | set(files)):
            entry, problem = self._match(name, files)
            if entry is not None:
                good.append((entry.get("global_step", -1), name == "last.pt", name, entry))
            elif problem != "missing":
                log.warning("checkpoint %s is unverified (%s): skipping it", self.folder / name, problem)
        return [g[2:] for g in sorted(good, key=lambda g: g[:3], reverse=True)]

    def newest_good(self) -> tuple[str, dict] | None:
        """(name, manifest entry) of the newest verified checkpoint."""
        good = self.verified()
        return good[0] if good else None

    def recover(self) -> list[str]:
        """For resume, with the run's lock held: if manifest.json is missing or unusable while
        checkpoint files are here, rebuild it from the files that load and pass the structural
        check (the old manifest is kept aside). A loadable checkpoint is never lost to a bad
        manifest. Returns the names recovered."""
        files, problem, dropped = self.read_manifest()
        for name in dropped:
            log.warning("manifest %s: ignored the entry %r (not a plain checkpoint name inside "
                        "checkpoints/, or malformed)", self.manifest_path, name)
        self._refuse_link()
        # files the manifest says nothing about (lost, or a malformed entry); a file whose
        # hash contradicts its entry stays unverified: that is what the hash is for
        names = [n for n in self.files_here() if n not in files and (self.folder / n).is_file()
                 and not (self.folder / n).is_symlink()]
        if not names:
            return []
        rebuilt = dict(files)
        for name in names:
            path = self.folder / name
            try:
                ckpt = check_fields(load_checkpoint(path, map_location="cpu"), path, training=True)
            except TrainlabError as e:
                log.warning("checkpoint %s: not recovered (%s)", path, e)
                continue
            rebuilt[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size,
                             "epoch": ckpt["epoch"], "global_step": ckpt["global_step"], "rebuilt": True}
        added = [n for n in names if n in rebuilt]
        if problem is not None and (self.manifest_path.exists() or self.manifest_path.is_symlink()):
            aside = self.manifest_path.with_name(f"{MANIFEST}.unusable-{_stamp()}")
            os.replace(self.manifest_path, aside)
            log.warning("manifest %s was %s: kept it as %s", self.manifest_path, problem, aside.name)
        if added or problem is not None:
            self._write_manifest(rebuilt)
            log.warning("%s %s: recorded %d of %d unlisted checkpoint file(s) that load and pass the "
                        "structural check: %s", "rebuilt" if problem else "repaired", self.manifest_path,
                        len(added), len(names), ", ".join(added) or "none")
        return added

    def set_aside(self, names: list[str], kind: str) -> Path:
        """Move `names` into <kind>-<time>-<random>/ (kept, never deleted) and drop them from
        the manifest; the folder's name is unique, so nothing set aside is ever overwritten."""
        files = self.read_manifest()[0]
        aside = self.folder / f"{kind}-{_stamp()}"
        aside.mkdir()
        for name in names:
            os.replace(self.folder / name, aside / name)
            files.pop(name, None)
        fsync_dir(aside)
        fsync_dir(self.folder)
        self._write_manifest(files)
        log.warning("moved %d checkpoint file(s) into %s (kept, not deleted): %s", len(names), aside, ", ".join(names))
        return aside

    def set_aside_unusable(self) -> Path | None:
        """Move checkpoint files that do not verify into unusable-<time>/, so a restart from
        epoch 0 cannot overwrite them."""
        files = self.read_manifest()[0]
        bad = [n for n in self.files_here() if self._match(n, files)[0] is None]
        return self.set_aside(bad, "unusable") if bad else None

    def remove_stale_temps(self) -> None:
        """Delete temporary files of interrupted writes (call only with the run's lock held)."""
        remove_stale_temps(self.folder)

    def prune_periodic(self, keep: int) -> None:
        """Keep the `keep` newest epoch-NNNN.pt files (0 = keep all)."""
        if keep <= 0:
            return
        periodic = sorted((n for n in self.read_manifest()[0] if re.fullmatch(r"epoch-\d+\.pt", n)),
                          key=lambda n: int(n[len("epoch-"):-len(".pt")]))  # epoch-10000 after epoch-9999
        for name in periodic[:-keep]:
            self.remove(name)
