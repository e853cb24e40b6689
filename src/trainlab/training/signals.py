"""Ctrl-C, SIGTERM and SIGHUP (a closed terminal, a dropped ssh) stop a run cleanly: a flag
is set, a callback sees it at the next step, the run saves where it stands and exits with
128 + the signal's number."""

from __future__ import annotations

import signal
import sys

from trainlab.errors import TrainlabError
from trainlab.training import distributed
from trainlab.training.callbacks import Callback

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP outside a training loop (loading, decoding, evaluating): it unwinds as
    Ctrl-C does, so temporary files are removed, and the CLI ends in one line, 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def stop_like_ctrl_c() -> None:
    """Outside fit() (whose StopOnSignal saves a checkpoint instead), SIGTERM and SIGHUP stop
    the command the way Ctrl-C does; the default would end the process where it stands."""
    for s in SIGNALS:
        if s != signal.SIGINT and signal.getsignal(s) is signal.SIG_DFL:
            try:
                signal.signal(s, _stop)
            except ValueError:  # not the main thread
                pass


class Interrupted(TrainlabError):
    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopOnSignal(Callback):
    """Installs the handlers for the length of fit(). A single process polls its own flag
    after every step (a Python bool: free). Under DDP all ranks must stop at the same step,
    so the flag is all-reduced, which is a host sync: that happens every `every` steps and
    at each epoch end only."""
    order = 95

    def __init__(self, every: int = 1, ctx: distributed.DistContext | None = None, device=None):
        self.signum: int | None = None
        self.every = every
        self.ctx, self.device = ctx, device
        self._old = {}

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum
        if self.ctx is not None and self.ctx.enabled and not self.ctx.is_main:  # rank 0 alone says it
            return
        try:  # after SIGHUP the terminal may be gone: printing must not kill the save
            print(f"\ntrainlab: {signal.Signals(signum).name} received: saving a checkpoint at the "
                  "next step (press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    def _seen(self) -> bool:
        if self.ctx is not None and self.ctx.enabled:  # every rank learns the signal one rank got
            signum = distributed.max_over_ranks(self.signum or 0, self.device)
            if signum and self.signum is None:
                self.signum = signum
            return bool(signum)
        return self.signum is not None

    def on_fit_start(self, run):
        for s in SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def on_step_end(self, run):
        if run.state.global_step % self.every == 0 and self._seen():
            return "interrupt"
        return None

    def on_epoch_end(self, run, row):
        # every rank polls here (an all-reduce under DDP), even when early stopping already voted
        return "interrupt" if self._seen() else None  # at an epoch boundary: its checkpoint is the resume point

    def on_fit_end(self, run):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
