"""Larger than memory: each split's rows as its own .npy beside the decode cache, written once
and memory-mapped copy-on-write, with the sha256 recorded when written checked on every read."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from trainlab.data.folder.cache import _sha256
from trainlab.data.folder.cache_locks import remove_stale, set_aside
from trainlab.data.folder.decode import _new_npy
from trainlab.errors import DataError
from trainlab.store.atomic import install_folder

log = logging.getLogger("trainlab.data")


def _mapped_splits(cache: Path, images: np.ndarray, parts: dict[str, np.ndarray]
                   ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each split's rows as its own .npy beside the decode cache (written once, in a fresh
    temporary folder renamed whole), memory-mapped copy-on-write: nothing is read into memory;
    and each one's sha256, checked against the one recorded when it was written. A folder whose
    files do not open as the expected arrays, or hash otherwise, is set aside and written again."""
    key = hashlib.sha256(b"".join(np.asarray(parts[k], np.int64).tobytes() + b"|" for k in sorted(parts)))
    final = cache / f"splits-{key.hexdigest()[:32]}"
    remove_stale(cache)
    for _ in range(2):
        if not final.is_dir():
            _write_splits(final, images, parts)
        try:
            split = {name: np.load(final / f"{name}.npy", mmap_mode="c", allow_pickle=False) for name in parts}
            recorded = json.loads((final / "hashes.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeError):
            split = recorded = None
        if split is not None and all(a.dtype == np.uint8 and a.shape == (len(parts[n]),) + images.shape[1:]
                                     for n, a in split.items()):
            hashes = {name: _sha256(a) for name, a in split.items()}  # the data set's hashes: one pass
            if recorded == hashes:
                return split, hashes
        log.warning("data: the memory-mapped splits in %s are damaged; writing them again", final)
        set_aside(final)
    raise DataError(f"the memory-mapped splits in {final} cannot be read back; remove {cache} and try again")


def _write_splits(final: Path, images: np.ndarray, parts: dict[str, np.ndarray]) -> None:
    tmp = final.parent / f".splits-{os.getpid()}-{secrets.token_hex(4)}"
    hashes = {}
    try:
        tmp.mkdir()
        for name, idx in parts.items():
            out = _new_npy(tmp / f"{name}.npy", (len(idx),) + images.shape[1:])
            for a in range(0, len(idx), 4096):
                out[a:a + 4096] = images[idx[a:a + 4096]]
            out.flush()
            hashes[name] = _sha256(out)
            del out
        with open(tmp / "hashes.json", "w", encoding="utf-8") as f:
            json.dump(hashes, f)
        install_folder(tmp, final)  # False when another process won the race: its copy is kept
    except OSError as e:
        raise DataError(f"the memory-mapped splits cannot be written in {final.parent} ({e.strerror or e}); "
                        "free some space or set XDG_CACHE_HOME to a writable disk with room") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
