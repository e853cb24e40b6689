"""Process-wide settings (threads, TF32, malloc) and the CPU tuning: keep glibc from handing
big activation buffers back to the OS.

A CNN step allocates and frees the same multi-megabyte activation buffers every step. By
default glibc serves blocks above its mmap threshold (128 KiB, rising dynamically to at most
32 MiB) with fresh `mmap` calls and returns them with `munmap`, and it trims the top of the
heap once more than the trim threshold is free: each step then page-faults (and zeroes)
its buffers in again. Measured on a 2-core EPYC, that was up to a third of a cnn epoch, and
it made bigger batches slower (benchmarks/RESULTS.md).

The `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` environment variables are read only
when a process starts, so a library cannot set them for its own process; `mallopt` through
ctypes can, at any time (it affects allocations made afterwards).

`apply_cpu_tuning()` is idempotent, never raises, and is a no-op (with the reason in the
returned report) where the C library is not glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import platform
import sys

log = logging.getLogger("trainlab")

# mallopt parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_INT_MAX = 2**31 - 1  # mallopt takes a C int
# glibc refuses mmap thresholds above HEAP_MAX_SIZE/2 (32 MiB on 64-bit)
MAX_MMAP_THRESHOLD = 32 * 2**20

_applied: dict | None = None


def _glibc():
    """The loaded glibc as a ctypes library, or (None, reason)."""
    if not sys.platform.startswith("linux"):
        return None, f"not glibc: platform {sys.platform}"
    libc_name, version = platform.libc_ver()
    if libc_name != "glibc":
        return None, f"not glibc: C library {libc_name or 'unknown'} (e.g. musl)"
    try:
        libc = ctypes.CDLL(None)  # the process's own C library, already loaded
        fn = libc.mallopt
    except (OSError, AttributeError) as e:
        return None, f"glibc {version} but mallopt is unavailable ({e})"
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return libc, f"glibc {version}"


def apply_cpu_tuning(*, mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = _INT_MAX,
                     top_pad: int = 64 * 2**20, disable_mmap: bool = True,
                     force: bool = False) -> dict:
    """Raise glibc's malloc thresholds for this process. Returns what was done:
    {"applied": bool, "reason": str, "settings": {name: value}, "failed": [names]}.

    - M_MMAP_THRESHOLD = 32 MiB (glibc's maximum): blocks below it come from the heap.
    - M_MMAP_MAX = 0 (`disable_mmap`): blocks above it too (a cnn batch of 512 has 50 MiB
      activations), so no buffer is ever unmapped and faulted back in.
    - M_TRIM_THRESHOLD = INT_MAX: the heap top is never given back to the OS mid-run.
    - M_TOP_PAD = 64 MiB: grow the heap in big steps (fewer brk calls).
    The cost: the process keeps its peak heap until it exits (its RSS does not shrink).
    """
    global _applied
    if _applied is not None and not force:
        return _applied
    libc, reason = _glibc()
    if libc is None:
        _applied = {"applied": False, "reason": reason, "settings": {}, "failed": []}
        log.debug("cpu tuning skipped: %s", reason)
        return _applied
    settings = {"M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, min(int(mmap_threshold), MAX_MMAP_THRESHOLD)),
                "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, min(int(trim_threshold), _INT_MAX)),
                "M_TOP_PAD": (M_TOP_PAD, min(int(top_pad), _INT_MAX))}
    if disable_mmap:
        settings["M_MMAP_MAX"] = (M_MMAP_MAX, 0)
    done, failed = {}, []
    for name, (param, value) in settings.items():
        if libc.mallopt(param, value) == 1:  # mallopt returns 1 on success
            done[name] = value
        else:
            failed.append(name)
    _applied = {"applied": bool(done), "reason": reason, "settings": done, "failed": failed}
    log.debug("cpu tuning: %s", _applied)
    return _applied


def malloc_tuning_state() -> dict | None:
    """What apply_cpu_tuning() did in this process (None: not called)."""
    return _applied


def apply_process_settings(cfg, device) -> None:
    """The process-wide settings a run asks for, applied once its config has been checked:
    the CPU thread count, glibc's malloc thresholds (CPU only; measured: cnn epochs up to
    1.9x faster, benchmarks/RESULTS.md) and TF32 matmuls (CUDA only)."""
    import torch

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.malloc_tuning and device.type == "cpu":
        apply_cpu_tuning()
    if cfg.tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@contextlib.contextmanager
def library_output(progress: bool | None, quiet: bool):
    """Called from a notebook or script, trainlab's lines (the run, each epoch) go to stdout
    unless progress=False; the CLI and any program that configured logging are left alone."""
    logger = logging.getLogger("trainlab")
    if progress is False or quiet or logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
