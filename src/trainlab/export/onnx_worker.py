"""ONNX Runtime in a child process (onnx_run.py starts it as `python -I onnx_worker.py`):
a graph that runs for ever, or a signal that the runtime would hold back, ends by the parent
killing this process. It imports numpy and onnxruntime only (not trainlab: no torch to
load), reads its work from stdin and writes the probabilities to stdout.

stdin: one JSON line {"model": nbytes, "shape": [N, C, H, W], "threads": t, "batch": b,
"classes": k, "cpu_seconds": s,
"parent": pid}, then the model's bytes, then the uint8 images. stdout: N x K float32.
On failure: one line on stderr, exit 3.
"""

import json
import os
import resource
import signal
import sys


def main() -> int:
    # Ctrl-C and a closed terminal reach the whole process group: the parent decides, and kills us
    for s in (signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if s is not None:
            signal.signal(s, signal.SIG_IGN)
    src = sys.stdin.buffer
    job = json.loads(src.readline())
    # if the parent is killed outright (kill -9), this process must not run on: die with it
    # (Linux), and in any case within the deadline's CPU time
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != job["parent"]:  # it died before prctl took effect
        return 3
    cpu = int(job["cpu_seconds"])
    if cpu > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    model = src.read(job["model"])
    import numpy as np

    shape = tuple(job["shape"])
    images = np.frombuffer(src.read(int(np.prod(shape))), dtype=np.uint8).reshape(shape)
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = job["threads"]
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        b = job["batch"]
        out = [sess.run(["probabilities"], {"images": images[i:i + b]})[0] for i in range(0, len(images), b)]
        probs = np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
        if probs.shape != (len(images), job["classes"]):
            raise ValueError(f"it returned probabilities shaped {probs.shape}, not {(len(images), job['classes'])}")
    except Exception as e:  # noqa: BLE001 -- the runtime's own error types: one line for the parent
        print((str(e).splitlines() or [type(e).__name__])[0][:300], file=sys.stderr)
        return 3
    sys.stdout.buffer.write(probs.tobytes())
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
