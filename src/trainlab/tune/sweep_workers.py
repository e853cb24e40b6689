"""A sweep's worker processes (--workers K): spawned, each ending with its parent, a signal to
the parent forwarded to them once (each saves its trial), and a failed worker reported in one line."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from pathlib import Path

from trainlab.errors import TrainlabError
from trainlab.training.signals import stop_like_ctrl_c
from trainlab.tune.sweep_space import Space, load_space
from trainlab.tune.sweep_trial import run_sweep_worker


def _die_with_parent(parent: int) -> None:
    """PR_SET_PDEATHSIG: SIGTERM when the parent dies however it dies (kill -9 included), so a
    worker saves its trial and ends instead of training the rest of the study alone."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _worker(space_path: str, trials: int, out: str, threads: int | None, seed: int, storage: str | None,
            parent: int) -> None:
    """One worker process: ends with its parent, stops on the signal the parent forwards (its
    trial saved, to be resumed), and ends in one line, never a traceback."""
    stop_like_ctrl_c()  # SIGTERM / SIGHUP outside a trial's training unwind as Ctrl-C does
    _die_with_parent(parent)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only, which forwards it once
    try:
        space, out_dir = load_space(space_path), Path(out)
        run_sweep_worker(space, trials, out_dir, threads, seed, None, storage)
    except TrainlabError as e:
        print(f"trainlab: sweep worker {os.getpid()}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))


def _run_workers(space: Space, trials: int, out: Path, workers: int, threads, seed: int, storage) -> None:
    """K worker processes; a signal to this one is forwarded to them (each saves its trial), they
    are waited for, and the signal ends this one too (128 + signum)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = threads or max(1, cores // workers)  # the cores divided among the workers
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(space.source, trials, str(out), threads, seed, storage, os.getpid()))
             for _ in range(workers)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM / SIGHUP (Stopped): the workers stop too
        signum = getattr(e, "signum", signal.SIGINT)
        _stop_workers(procs, signum)
        raise
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise TrainlabError(f"{len(failed)} sweep worker(s) failed (exit {failed[0]}; the reason is on the line "
                            "above): fix that and run the same command again to continue the sweep")


def _stop_workers(procs, signum: int) -> None:
    for p in procs:
        if p.pid is not None and p.exitcode is None:
            with contextlib.suppress(OSError):
                os.kill(p.pid, signum)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:  # they save their checkpoints; a worker that hangs is killed after a while
        for p in procs:
            p.join(timeout=300)
            if p.exitcode is None:
                p.kill()
                p.join()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


