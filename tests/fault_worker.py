"""Runs `trainlab ARGS` in this process with faults installed at the write path's seam
(trainlab.store.faults), for tests that kill or race a writer in a child process: each phase
is appended to a log (fsynced, so a kill -9 leaves it readable) and each phase is slowed,
widening the windows a kill or a second process must hit.

usage: python fault_worker.py [--log FILE] [--delay SECONDS] -- ARGS...
"""

import os
import sys
import time

from trainlab.cli.main import main as trainlab_main
from trainlab.store import faults


class WriteFaults:
    """Record each phase as "PHASE NAME [STEP]" in `log`, then sleep `delay` seconds."""

    def __init__(self, log: str | None = None, delay: float = 0.0):
        self.log, self.delay = log, delay

    def at(self, phase: str, name: str, step: int | None = None) -> None:
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{phase} {name}" + ("" if step is None else f" {step}") + "\n")
                f.flush()
                os.fsync(f.fileno())
        if self.delay:
            time.sleep(self.delay)


def command(*args, log=None, delay: float = 0.0) -> list[str]:
    """The command line that runs `trainlab ARGS` under these faults."""
    opts = (["--log", str(log)] if log else []) + (["--delay", str(delay)] if delay else [])
    return [sys.executable, os.path.abspath(__file__), *opts, "--", *map(str, args)]


def main(argv: list[str]) -> int:
    split = argv.index("--")
    opts, args = dict(zip(argv[:split:2], argv[1:split:2])), argv[split + 1:]
    faults.FAULTS = WriteFaults(opts.get("--log"), float(opts.get("--delay", 0)))
    sys.argv = ["trainlab", *args]  # as `python -m trainlab ARGS` sees them
    return trainlab_main(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
