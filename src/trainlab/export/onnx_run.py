"""Run a checked ONNX graph (onnx_guard.py) under a deadline, with signals working: ONNX
Runtime runs in a child process (onnx_worker.py), and this process only waits for it. The
wait is ordinary Python, so Ctrl-C, SIGTERM and SIGHUP stop it as they stop any trainlab
command (training/signals.py: one line, exit 128 + signum); the deadline, or a signal,
kills the child, so no graph keeps a core busy after trainlab has ended.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from trainlab.errors import TrainlabError

WORKER = Path(__file__).with_name("onnx_worker.py")
DEFAULT_TIMEOUT = 600.0  # seconds for one predict; --timeout changes it
BATCH = 1000
MAX_THREADS = 16


def threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_THREADS))


def run(model: bytes, images: np.ndarray, num_classes: int, *, timeout: float | None = DEFAULT_TIMEOUT,
        name: str = "the ONNX model", batch: int = BATCH) -> np.ndarray:
    """N x num_classes float32 probabilities of uint8 N,C,H,W `images`, `batch` at a time (what
    onnx_guard.check_sizes allows); `timeout` None: no deadline (trainlab's own freshly exported graph)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    t = threads()
    job = {"model": len(model), "shape": list(images.shape), "threads": t, "batch": max(1, min(int(batch), BATCH)), "classes": num_classes,
           "cpu_seconds": int(t * timeout) + 10 if timeout else 0, "parent": os.getpid()}
    payload = json.dumps(job).encode() + b"\n" + model + images.tobytes()
    # -I: no user site, no PYTHONPATH, not the current folder -- only the installed packages
    proc = subprocess.Popen([sys.executable, "-I", str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TrainlabError(f"{name} ran longer than {timeout:g} s on {len(images)} images and was stopped "
                            "(a graph that never ends, or a slow one: raise --timeout if you trust it)") from None
    finally:  # a signal (KeyboardInterrupt, Stopped) or the deadline: the child must not outlive us
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if proc.returncode != 0:
        line = (err.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:300]
        how = f"exit {proc.returncode}" if proc.returncode > 0 else f"killed by signal {-proc.returncode}"
        raise TrainlabError(f"{name} is not a model ONNX Runtime can run ({line or how})")
    want = len(images) * num_classes * 4
    if len(out) != want:
        raise TrainlabError(f"{name} returned {len(out)} bytes of probabilities, not {want} "
                            f"({len(images)} images x {num_classes} classes)")
    return np.frombuffer(out, dtype=np.float32).reshape(len(images), num_classes).copy()
