"""Loading a file that may be hostile: `torch.load(weights_only=True)` after forensics that
read, without unpickling, what the file would import, so a pickled model, a plain pickle,
a zip bomb or a torn file ends in one sentence and nothing in it is ever run."""

from __future__ import annotations

import os
import pickletools
import re
import zipfile
from pathlib import Path

import torch

from trainlab.errors import TrainlabError


class CheckpointError(TrainlabError):
    pass


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

