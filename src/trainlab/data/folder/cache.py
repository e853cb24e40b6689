"""The decode cache: `cache_root()/folder/<group>-<key>/` holds images.npy (uint8 N,C,H,W),
sums.npy and meta.json, written in a fresh temporary folder and renamed into place whole.

What a key guarantees: <group> is the folder's resolved absolute path and the size policy;
<key> adds every image file's relative path, size, mtime, inode, device and ctime. A copy of
a folder (cp -a, rsync -a, tar, zip: same names, sizes and mtimes) has another path and other
inodes; a file rewritten in place, even with its size and mtime put back (`touch -r`), has a
new ctime, which no program can set back. So no folder is ever served another's pixels, and
no edited file its old ones. (A moved or re-mounted folder, a chmod, is decoded again: safe.)

What is read back is checked: meta.json must describe the scan, and the pixels and sums must
hash (sha256) to what meta.json recorded when they were written (once per process and file
state). A cache that fails is set aside with one warning line and decoded again.

Superseded copies (the same folder and policy, an older key) are removed once a newer one is
in place, but never while another process maps them (cache_locks); the splits of a data set
larger than memory are mapped beside the cache (mapped_splits)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from trainlab.data.folder.cache_locks import (
    LOCK,
    hold_new,
    hold_shared,
    keep_hold,
    remove_stale,
    remove_superseded,
    set_aside,
)
from trainlab.data.folder.decode import MAX_SIDE, _pillow, decode_folder
from trainlab.data.folder.scanner import Scan, scan
from trainlab.data.sources import cache_root
from trainlab.errors import DataError
from trainlab.store.atomic import install_folder

log = logging.getLogger("trainlab.data")

CACHE_VERSION = 3
_MAX_META = 1 << 28  # bytes of a cache's meta.json
_verified: set[tuple] = set()  # (path, dev, ino, size, mtime_ns, ctime_ns) of arrays hashed here


def _root_id(s: Scan) -> str:
    return str(s.root.resolve())


def cache_group(s: Scan, image_size: int | None) -> str:
    """The folder (resolved) and the size policy: copies of one group supersede each other."""
    text = json.dumps({"version": CACHE_VERSION, "root": _root_id(s), "image_size": image_size,
                       **({"layout": s.layout} if s.layout.startswith("csv:") else {})}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def cache_key(s: Scan, image_size: int | None, channels: int | None = None) -> str:
    """The cache folder's name for this scan and policy (see the module docstring)."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "root": _root_id(s), "layout": s.layout, "classes": s.classes,
                         "image_size": image_size, "channels": channels}, sort_keys=True)
             .encode("utf-8", "surrogateescape"))
    h.update("".join(f"\0{r}\0{n}\0{m}\0{i}\0{d}\0{c}" for r, n, m, i, d, c in
                     zip(s.rels, s.sizes, s.mtimes_ns, s.inodes, s.devices, s.ctimes_ns))
             .encode("utf-8", "surrogateescape"))
    if s.layout.startswith("csv:"):  # the labels and splits come from the CSV, not from the files' places
        h.update(json.dumps([s.labels, s.splits]).encode())
    return f"{cache_group(s, image_size)}-{h.hexdigest()}"


def _sha256(arr: np.ndarray) -> str:
    """payload_sha256 of a contiguous array, 64 MiB at a time (a mapped file stays mapped)."""
    h = hashlib.sha256()
    flat = arr.reshape(-1).view(np.uint8) if arr.size else np.zeros(0, np.uint8)
    for a in range(0, len(flat), 64 << 20):
        h.update(memoryview(np.ascontiguousarray(flat[a:a + (64 << 20)])))
    return h.hexdigest()


# ---------------------------------------------------------------- reading and checking

def _is_int(v, low: int, high: int | None = None) -> bool:
    return type(v) is int and v >= low and (high is None or v <= high)


def _counts(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _is_int(c, 0) for k, c in v.items())


def _meta_describes(meta, s: Scan, image_size: int | None) -> bool:
    """Whether a cache's meta.json is well formed and agrees with the scan it is keyed by: the
    files are the scan's (in its order) with their own labels and splits, and every other file
    of the scan is listed as bad. A damaged or edited meta.json is decoded again, never trusted."""
    if not (isinstance(meta, dict) and meta.get("version") == CACHE_VERSION and meta.get("layout") == s.layout
            and meta.get("classes") == s.classes and meta.get("image_size") == image_size
            and meta.get("channels") in (1, 3) and type(meta.get("channels")) is int
            and _is_int(meta.get("width"), 1, MAX_SIDE) and _is_int(meta.get("height"), 1, MAX_SIDE)
            and isinstance(meta.get("policy"), str) and meta.get("ignored") == s.ignored
            and _counts(meta.get("modes")) and _counts(meta.get("sizes"))):
        return False
    files, bad = meta.get("files"), meta.get("bad")
    if not (isinstance(files, list) and isinstance(bad, list) and len(files) + len(bad) == len(s.rels)):
        return False
    if not all(isinstance(b, list) and len(b) == 2 and all(isinstance(x, str) for x in b) for b in bad):
        return False
    if not bad:  # the usual case, in one comparison per list
        return files == s.rels and meta.get("labels") == s.labels and meta.get("splits") == s.splits
    where = {r: i for i, r in enumerate(s.rels)}
    rows = [where.get(f, -1) if isinstance(f, str) else -1 for f in files]
    if any(b <= a for a, b in zip([-1] + rows, rows)):  # each a scanned file, in scan order, once
        return False
    if {b[0] for b in bad} != set(s.rels) - set(files):
        return False
    return meta.get("labels") == [s.labels[i] for i in rows] and meta.get("splits") == [s.splits[i] for i in rows]


def _arrays_verified(folder: Path, images: np.ndarray, sums: np.ndarray, meta: dict) -> bool:
    """The pixels and sums hash to what meta.json recorded when they were written (skipped
    for a file state this process has already hashed)."""
    states = []
    for name in ("images.npy", "sums.npy"):
        try:
            st = os.stat(folder / name)
        except OSError:
            st = None  # no images.npy: a cache of no good file
        states.append(None if st is None else (str(folder / name), st.st_dev, st.st_ino, st.st_size,
                                               st.st_mtime_ns, st.st_ctime_ns))
    key = tuple(states)
    if key in _verified:
        return True
    if _sha256(images) != meta.get("images_sha256") or _sha256(sums) != meta.get("sums_sha256"):
        return False
    _verified.add(key)
    return True


def _read_cache(folder: Path, s: Scan, image_size: int | None) -> tuple[np.ndarray, dict] | str:
    """The cache's images (memory-mapped) and meta, or why it cannot be used (damaged, or it
    does not describe this scan): the caller then decodes again."""
    meta_path, images_path, sums_path = folder / "meta.json", folder / "images.npy", folder / "sums.npy"
    try:
        if not hold_shared(folder):
            return "its lock file is missing or held exclusively by another process"
        if meta_path.stat().st_size > _MAX_META:
            return "meta.json is too large"
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not _meta_describes(meta, s, image_size):
            return "meta.json does not describe the folder"
        n = len(meta["files"])
        shape = (n, meta["channels"], meta["height"], meta["width"])
        if sums_path.stat().st_size > n * shape[1] * 2 * 8 + 4096:  # a bound before reading it
            return "sums.npy is too large"
        images = np.load(images_path, mmap_mode="r", allow_pickle=False) if n else np.zeros(shape, np.uint8)
        sums = np.load(sums_path, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError, UnicodeError) as e:
        return f"it cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})"
    if images.dtype != np.uint8 or images.shape != shape or sums.shape != (n, shape[1], 2) or sums.dtype != np.int64:
        return "its arrays are not of the shape meta.json gives"
    if not _arrays_verified(folder, images, sums, meta):
        return "its arrays do not match the sha256 recorded when they were written"
    meta["sums"] = sums
    return images, meta


def _new_cache(s: Scan, image_size: int | None, workers: int | None, base: Path, final: Path) -> None:
    """Decode into a fresh temporary folder, hash, and rename it to `final` whole."""
    tmp = base / f".decode-{os.getpid()}-{secrets.token_hex(4)}"
    fd = None
    try:
        tmp.mkdir()  # fresh: fails if anything stands at the name
        (tmp / LOCK).touch()
        fd = hold_new(tmp / LOCK)  # held before the rename: no remover can take it from under us
        images, meta = decode_folder(s, image_size, workers, tmp)
        sums = np.load(tmp / "sums.npy", allow_pickle=False)
        meta.update(version=CACHE_VERSION, key=final.name, images_sha256=_sha256(images),
                    sums_sha256=_sha256(sums))
        del images  # the mapping is reopened from the final place
        _write_meta(tmp / "meta.json", meta)
        if install_folder(tmp, final) and fd is not None:  # False: another process won, its copy is kept
            keep_hold(final, fd)
            fd = None
    except OSError as e:  # a full or read-only disk, mostly: nothing half-written is kept
        raise DataError(f"folder:{s.root}: decoding into the cache {base} failed ({e.strerror or e}); "
                        "free some space or set XDG_CACHE_HOME to a writable disk with room") from None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_decoded(root: str | os.PathLike, image_size: int | None = None, workers: int | None = None,
                 scanned: Scan | None = None) -> tuple[np.ndarray, dict, Scan]:
    """The folder's images (uint8 N,C,H,W, memory-mapped from the cache, decoding it first
    when needed) and the cache's meta: files, labels, splits, policy, modes, sizes, bad files."""
    s = scanned if scanned is not None else scan(root)  # csv: gives its own scan
    _pillow()
    base = cache_root() / "folder"
    final = base / cache_key(s, image_size)
    for attempt in range(2):
        hit = _read_cache(final, s, image_size) if final.is_dir() else None
        if isinstance(hit, tuple):
            if attempt == 0:
                log.info("data: read the decoded cache %s (%d images)", final, len(hit[1]["files"]))
            else:
                log.info("data: decoded %d images of %s into the cache %s", len(hit[1]["files"]), s.root, final)
            remove_superseded(base, final)
            return hit[0], hit[1], s
        if attempt:
            break
        if hit is not None:  # damaged, or from an older trainlab: set aside whole, then removed
            log.warning("data: the decode cache %s is damaged (%s); decoding the folder again", final, hit)
            set_aside(final)
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"the cache folder {base} cannot be created ({e.strerror or e}); "
                            "set XDG_CACHE_HOME to a writable folder") from None
        remove_stale(base)
        _new_cache(s, image_size, workers, base, final)
    raise DataError(f"the decode cache {final} cannot be read back; remove it and try again")


def _write_meta(path: Path, meta: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:  # inside the fresh temporary folder
        json.dump(meta, f)
