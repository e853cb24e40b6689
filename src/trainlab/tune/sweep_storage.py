"""Where a sweep's study lives and who holds what in its folder.

The study is Optuna's journal file `DIR/study.journal` or an RDB URL given with --storage.
Every file trainlab opens in the sweep folder refuses a symbolic link (a received folder
must not make the study append elsewhere), and the recorded URL (`storage.url`, 0600: it may
hold a password) is used only when --storage gives it again: a folder alone never decides
where the study is written.

Liveness: each running trial holds an OS lock (flock) on `DIR/.claims/<run>.lock`, taken in
the same locked step as the ask. The OS drops it when its process dies however it dies, so
"RUNNING in the study and nobody holds its claim" means killed, never "just started".
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from pathlib import Path

from trainlab.errors import ConfigError, StoreError
from trainlab.store.atomic import commit, discard, write_error

JOURNAL = "study.journal"
JOURNAL_LOCK = JOURNAL + ".lock"  # Optuna's journal lock file (here an flock on it, see JournalFlock)
TRIALS = "trials"
SUMMARY = "sweep.json"
STORAGE_FILE = "storage.url"
SWEEP_LOCK = ".sweep.lock"  # held around "requeue, count, ask, claim"
CLAIMS = ".claims"
_FILES = (JOURNAL, JOURNAL_LOCK, STORAGE_FILE, SWEEP_LOCK, SUMMARY, "sweep.png", "sweep.pdf")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
HOST = socket.gethostname()


def _link_error(path: Path) -> StoreError:
    return StoreError(f"{path} is a symbolic link (planted?): trainlab never writes through a link in a sweep "
                      "folder; remove it (its target is untouched) and run the command again")


def check_folder(out: Path) -> None:
    """Refuse links (and non-folders) where the sweep writes, before anything is opened."""
    for name in _FILES:
        if (out / name).is_symlink():
            raise _link_error(out / name)
    for name in (TRIALS, CLAIMS):
        path = out / name
        if path.is_symlink():
            raise _link_error(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is not a folder: a sweep folder's {name} must be one; remove it or choose "
                             "another --out")
    for folder in (out / TRIALS, out / CLAIMS):
        if folder.is_dir():
            for entry in os.scandir(folder):
                if entry.is_symlink():
                    raise _link_error(Path(entry.path))


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW | _CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _link_error(path) from None
        raise write_error(path, e) from None


@contextlib.contextmanager
def sweep_lock(out: Path):
    """Every process of the sweep (workers, a second copy of the command) in turn."""
    import fcntl

    fd = open_nofollow(out / SWEEP_LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def claim(out: Path, run: str) -> int | None:
    """The claim on a trial's run folder: an fd holding the flock, or None if a live process has it."""
    import fcntl

    folder = out / CLAIMS
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:
        raise write_error(folder, e) from None
    if folder.is_symlink() or not folder.is_dir():
        raise _link_error(folder)
    fd = open_nofollow(folder / f"{run}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


# ---- the storage ----------------------------------------------------------------------

def _masked(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable: show only the scheme
        return url.partition("://")[0] + "://..."


def _recorded(out: Path) -> str | None:
    path = out / STORAGE_FILE
    if not (path.exists() or path.is_symlink()):
        return None
    fd = open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK)  # (a FIFO planted there must not block)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{path} is not a regular file; remove it, then give --storage again")
    with os.fdopen(fd, "rb") as f:
        text = f.read(4097)
    if len(text) > 4096:
        raise StoreError(f"{path} is not a storage URL (over 4 KiB); remove it, or give --storage again")
    return text.decode("utf-8", "replace").strip()


def _record(out: Path, url: str) -> None:
    """storage.url, written 0600 (a URL may carry a password), atomically, never through a link."""
    path = out / STORAGE_FILE
    tmp = out / f".{STORAGE_FILE}.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(url + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        discard(tmp)
        raise write_error(path, e) from None
    commit(tmp, path)


def try_rdb(url: str):
    """Open an RDB URL now, so a bad one is one sentence before anything is recorded."""
    named = f"--storage {_masked(url)!r}"
    bad = (f"{named} cannot be used: give an Optuna RDB URL that opens, e.g. sqlite:////abs/path/sweep.db or "
           "postgresql://user@host/db")
    if "://" not in url or any(c in url for c in "\n\r\0"):
        raise ConfigError(bad)
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except ImportError:
        raise ConfigError("--storage needs SQLAlchemy: pip install 'trainlab[sweep]'") from None
    except Exception:  # noqa: BLE001 - SQLAlchemy's parser says no in several ways
        raise ConfigError(bad) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError(f"--storage {_masked(url)!r} is an in-memory database: the study would vanish at exit; "
                          "give a file, e.g. sqlite:////abs/path/sweep.db")
    if parsed.get_backend_name() == "sqlite" and not os.path.isabs(parsed.database):
        raise ConfigError(f"--storage {_masked(url)!r} is a relative path: every command must reach the same file, "
                          "so give it absolutely, e.g. sqlite:////abs/path/sweep.db (four slashes)")
    import time

    from optuna.storages import RDBStorage

    for attempt in range(20):
        try:
            return RDBStorage(url)
        except Exception as e:  # noqa: BLE001 - a missing driver, a refused connection, a bad path: the URL's fault
            text = str(e)
            # two copies creating one new database at once: the loser sees the winner's lock, its
            # tables half-made or its schema version row (measured: 7 of 16 racing opens); that is
            # the other copy at work, not a bad URL
            if attempt < 19 and any(w in text for w in ("database is locked", "already exists",
                                                         "UNIQUE constraint failed: alembic_version")):
                time.sleep(0.25 * (attempt + 1))
                continue
            reason = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
            raise ConfigError(f"{named} cannot be opened ({reason}): check the URL, the server "
                              "and the driver, then run again") from None


def open_storage(out: Path, storage: str | None, record: bool = True):
    """The study's storage. `storage` is --storage (None: the journal file in the folder), opened
    before it is recorded (with `record`)."""
    recorded = _recorded(out)
    if storage is None:
        if recorded is not None:
            raise ConfigError(f"{out} records its study in a database ({out / STORAGE_FILE}): give --storage with "
                              "that URL again to use it (a sweep folder alone never chooses where its study is "
                              "written)")
        return journal(out)
    if recorded is not None and recorded != storage:
        raise ConfigError(f"{out} already records another storage ({_masked(recorded)!r}): give that --storage, "
                          "or another --out")
    if recorded is None and (out / JOURNAL).exists() and (out / JOURNAL).stat().st_size:
        raise ConfigError(f"{out} already holds a study in {JOURNAL}: run it without --storage, or use another --out")
    rdb = try_rdb(storage)
    if recorded is None and record:
        _record(out, storage)
    return rdb


class _JournalFlock:
    """Optuna's journal lock as an flock on study.journal.lock, opened without following a link:
    the OS drops it when a process dies, so no stale lock and no 30-second grace wait."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def acquire(self) -> bool:
        import fcntl

        fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def journal(out: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = out / JOURNAL
    if path.is_symlink():  # Optuna opens it with a plain open(): check first
        raise _link_error(path)
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        raise StoreError(f"{path} is not a regular file; remove it or choose another --out")
    try:  # (Optuna calls only acquire() and release() on its lock object)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=_JournalFlock(out / JOURNAL_LOCK)))
    except OSError as e:
        raise write_error(path, e) from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError, AssertionError) as e:
        # (Optuna replays every line when it opens the journal: bytes that are not UTF-8 JSON, or
        # records it never writes, fail there with these)
        raise StoreError(f"{path} is not an Optuna journal Optuna can replay ({type(e).__name__}); move it "
                         "aside (the trials' folders stay usable) or choose another --out") from None
