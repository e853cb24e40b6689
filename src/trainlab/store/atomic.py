"""The one way trainlab writes a file, so that no crash, kill or planted link costs data.

Every file trainlab writes (checkpoints, manifest, model.pt, config.toml, meta/results JSON,
reports, exports) goes through `atomic_write_bytes`: a fresh temporary name in the same
folder, created with O_EXCL | O_NOFOLLOW (a symlink or file planted at that name makes the
open fail instead of redirecting the write), flushed and fsynced, then renamed over the
target (rename replaces a link at the target itself, never what it points to). Appends
(metrics.jsonl) open with O_NOFOLLOW too. A folder (a data cache) is written into a fresh
temporary folder beside its place and installed whole by `install_folder`.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from trainlab.errors import StoreError
from trainlab.store import faults

TMP_MARK = ".tmp-"  # temporary files are ".<name>.tmp-<pid>-<random>"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY


def fsync_dir(folder: Path) -> None:
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


def write_error(path: Path, e: OSError) -> StoreError:
    """One sentence for an OSError while writing `path`."""
    if e.errno == errno.ENOSPC:
        return StoreError(f"the disk filled up while writing {path}; the partial file was removed "
                          "and earlier files are intact: free some space and try again (or resume)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(f"cannot write {path}: {e.strerror} (read-only or not yours); earlier files "
                          "are intact: fix the folder's permissions or write elsewhere (--runs-dir, -o)")
    if e.errno in (errno.ELOOP, errno.EEXIST):  # O_EXCL | O_NOFOLLOW said no
        return StoreError(f"refused to write {path}: a file or symbolic link stands at its temporary "
                          "name (planted?); nothing was written: remove it and try again")
    return StoreError(f"could not write {path}: {e.strerror or e}; earlier files are intact")


def write_temp(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` durably to a fresh temporary name beside `path`; returns that name.
    `commit` renames it into place; until then the target is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    created = False
    try:
        fd = os.open(tmp, _CREATE, 0o644)
        created = True
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            _write_all(f, data[:half])
            f.flush()
            faults.at("tmp-partial", path.name)  # a kill here leaves a half-written temp file
            _write_all(f, data[half:])
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if created:
            _unlink_quietly(tmp)
        raise write_error(path, e) from None
    except BaseException:
        if created:
            _unlink_quietly(tmp)
        raise
    return tmp


def commit(tmp: Path, path: str | os.PathLike) -> None:
    """Rename a finished temporary file over `path` (atomic) and make the rename durable."""
    path = Path(path)
    try:
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise write_error(path, e) from None
    fsync_dir(path.parent)


def discard(tmp: Path) -> None:
    _unlink_quietly(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` by `data`: a crash leaves the old file or the new, never a torn one."""
    commit(write_temp(path, data), path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line durably; a link at `path` is refused, never followed."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(line if line.endswith("\n") else line + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_error(path, e) from None


def install_folder(staged: Path, final: Path, complete: Callable[[Path], bool] = Path.is_dir) -> bool:
    """Rename the finished folder `staged` to `final` whole, so a reader sees no folder or a
    complete one. True when ours is installed; False when another process installed a
    complete one first: the loser keeps the winner's and removes `staged` itself.

    Something at `final` that `complete` rejects (an interrupted older install) is moved
    aside and removed first, since a rename cannot replace a non-empty folder. Raises
    OSError when the rename fails and no complete folder stands at `final`."""
    if (final.exists() or final.is_symlink()) and not complete(final):
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        try:
            os.replace(final, trash / final.name)
        except FileNotFoundError:
            pass  # another process moved it aside first
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(staged, final)
    except OSError:
        if not complete(final):
            raise
        return False  # another process won the race: its copy is as good
    fsync_dir(final.parent)
    return True


# the temporary names of trainlab before this module (never a user's own *.tmp file)
_LEGACY_TEMPS = {"config.toml.tmp", "meta.json.tmp", "results.json.tmp", "metrics.jsonl.tmp",
                 "evaluation.json.tmp", "report.html.tmp"}


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)  # unlink removes a link itself, never its target
    except OSError:
        pass


def remove_stale_temps(folder: str | os.PathLike) -> list[str]:
    """Delete temporary files of interrupted writes in `folder` (only with no writer running:
    the caller holds the run's lock). Returns the names removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in os.scandir(folder):
        name = entry.name
        stale = (name.startswith(".") and TMP_MARK in name) or name in _LEGACY_TEMPS
        if stale and not stat.S_ISDIR(entry.stat(follow_symlinks=False).st_mode):
            _unlink_quietly(folder / name)
            removed.append(name)
    return removed
