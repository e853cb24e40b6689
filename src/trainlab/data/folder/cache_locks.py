"""Who may remove a decode cache folder: each reader holds a shared lock (flock) on the
folder's `lock` file for as long as it lives, and a remover takes it exclusive without waiting
(a held copy is left for a later run). Superseded, damaged (set aside) and stale temporary
folders are removed here, never under a process that maps them."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; superseded copies are then kept (never removed under a reader)
    fcntl = None

log = logging.getLogger("trainlab.data")

STALE_SECONDS = 24 * 3600  # a temporary folder this old was left by a killed process
LOCK = "lock"
LOCK_TRIES = 50  # x 0.1 s
_held: dict[str, int] = {}  # cache folder -> the fd of its shared lock, held while this process lives


def hold_shared(folder: Path) -> bool:
    """Take (or keep) a shared lock on the cache folder for this process's life; False when
    the folder is not (any more) at its name or has no lock file."""
    if fcntl is None:
        return (folder / LOCK).is_file()
    fd = _held.get(str(folder))
    if fd is not None:
        try:
            if os.path.samestat(os.fstat(fd), os.stat(folder / LOCK)):
                return True
        except OSError:
            pass
        os.close(_held.pop(str(folder)))
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        for _ in range(LOCK_TRIES):  # a remover holds it only to rename the folder away
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.1)
        else:  # held for seconds: not a remover; the cache is set aside, never waited on for ever
            os.close(fd)
            return False
        if os.path.samestat(os.fstat(fd), os.stat(folder / LOCK)):
            _held[str(folder)] = fd
            return True
    except OSError:
        pass
    os.close(fd)
    return False


def remove_unheld(path: Path) -> bool:
    """Rename `path` aside and remove it, unless a process holds its lock: True when removed."""
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(path / LOCK, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            fd = None  # no lock file: a damaged or half-removed folder, nobody maps it
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
    elif (path / LOCK).exists():
        return False
    try:
        stale = path
        if not path.name.startswith(".stale-"):
            stale = path.parent / f".stale-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(path, stale)
        shutil.rmtree(stale, ignore_errors=True)
        return True
    except OSError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


def set_aside(path: Path) -> None:
    """Move a damaged cache folder out of the way whole (a reader never sees it half-removed),
    then remove it unless a process still maps it (then a later run does)."""
    stale = path.parent / f".stale-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.rename(path, stale)
    except OSError:
        return
    remove_unheld(stale)


def remove_superseded(base: Path, final: Path) -> None:
    """The same folder's and policy's older copies: each is a full decoded copy."""
    group = final.name.split("-")[0]
    for p in base.glob(f"{group}-*"):
        if p != final and p.is_dir() and not p.is_symlink():
            if str(p) in _held:  # this process's own hold: its mappings outlive the unlink (POSIX)
                os.close(_held.pop(str(p)))
            if remove_unheld(p):
                log.info("data: removed the superseded decode cache %s", p)


def remove_stale(base: Path) -> None:
    """Temporary folders (.decode-*, .splits-*, .stale-*) a killed process left a day ago or more."""
    now = time.time()
    for tag in (".decode-", ".splits-", ".stale-"):
        for p in base.glob(f"{tag}*"):
            try:
                if not p.is_dir() or p.is_symlink():
                    continue
                if tag == ".stale-":  # set aside: gone as soon as no process maps it
                    remove_unheld(p)
                elif now - p.lstat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass


def hold_new(path: Path) -> int | None:
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def keep_hold(folder: Path, fd: int) -> None:
    """`fd` (from hold_new) now holds `folder`, installed at its final name, for this process's life."""
    _held[str(folder)] = fd
