"""How far a reader follows the code: the trainlab modules a command passes through, and how
many times control climbs back up into a module it had left, on two walks:

  config      `trainlab train ...` from its command handler to the optimizer being built
  checkpoint  `trainlab resume RUN` from its command handler to the first training step

(from the handler: building the parser visits every command module, which says nothing about
the walk).

Measured with sys.setprofile on a real run (tiny synthetic data), so it counts what runs, not
what the files say. Usage (any checkout: PYTHONPATH picks the code):

    PYTHONPATH=src python benchmarks/walks.py
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


HANDLERS = ("cmd_train", "cmd_resume")  # where a walk starts


class Walk(Exception):
    """Raised at the walk's end point, to stop the command there."""


def _write_idx(folder: Path) -> None:
    import gzip
    import struct

    g = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for split, n in (("train", 600), ("t10k", 200)):
        images = g.integers(0, 255, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + labels.tobytes())


def trace(argv: list[str], stop_when) -> tuple[list[str], int]:
    """(modules visited in order of first visit, climbs): a climb is a return into a trainlab
    module from a deeper trainlab module other than itself."""
    from trainlab.cli.main import main

    seen: list[str] = []
    climbs = 0
    stack: list[str | None] = []

    def module_of(frame) -> str | None:
        name = frame.f_globals.get("__name__", "")
        return name if name.startswith("trainlab") else None

    inside = False

    def prof(frame, event, arg):
        nonlocal climbs, inside
        if not inside:
            inside = event == "call" and frame.f_code.co_name in HANDLERS
            if not inside:
                return
        if event == "call":
            if stop_when(frame):
                raise Walk
            mod = module_of(frame)
            stack.append(mod)
            if mod and mod not in seen:
                seen.append(mod)
        elif event == "return" and stack:
            mod = stack.pop()
            caller = next((m for m in reversed(stack) if m), None)
            if mod and caller and caller != mod:
                climbs += 1

    sys.setprofile(prof)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main(argv)
    except (Walk, SystemExit):
        pass
    finally:
        sys.setprofile(None)
    return seen, climbs


def main() -> None:
    import torch

    tmp = Path(tempfile.mkdtemp())
    _write_idx(tmp / "idx")
    common = ["--dataset", f"idx:{tmp / 'idx'}", "--runs-dir", str(tmp / "runs"), "--val-size", "100",
              "--batch-size", "50", "--quiet", "--threads", "1"]
    from trainlab.cli.main import main as cli

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        with contextlib.suppress(SystemExit):
            cli(["train", *common, "--epochs", "1", "--name", "done"])
    optimizer_init = torch.optim.Optimizer.__init__.__code__
    config, config_climbs = trace(["train", *common, "--epochs", "1", "--name", "walk"],
                                  lambda f: f.f_code is optimizer_init)
    step = torch.optim.Optimizer.zero_grad.__code__
    ckpt, ckpt_climbs = trace(["resume", str(tmp / "runs" / "done"), "--epochs", "2"], lambda f: f.f_code is step)
    print(f"config walk: {len(config)} modules, {config_climbs} climbs: {' > '.join(m[9:] for m in config)}")
    print(f"checkpoint walk: {len(ckpt)} modules, {ckpt_climbs} climbs: {' > '.join(m[9:] for m in ckpt)}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
