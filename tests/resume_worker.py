"""Runs in a fresh process for tests/test_resume.py: train until a given global step, then
interrupt itself with SIGTERM (the real signal path), or resume after scrambling every RNG.

usage: python resume_worker.py interrupt STEP CONFIG_JSON
       python resume_worker.py resume RUN_DIR [THREADS]
"""

import json
import os
import random
import signal
import sys

import numpy as np
import torch


def interrupt(step: int, config: dict) -> int:
    from trainlab.config import resolve
    from trainlab.data.loader import DeviceLoader
    from trainlab.training.start import train
    from trainlab.training.signals import Interrupted

    original = DeviceLoader.__iter__
    seen = {"n": 0}

    def counting_iter(self):
        for batch in original(self):
            yield batch
            if self.shuffle:  # the training loader
                seen["n"] += 1
                if seen["n"] == step:
                    os.kill(os.getpid(), signal.SIGTERM)

    DeviceLoader.__iter__ = counting_iter
    try:
        train(resolve(config), progress=False)
    except Interrupted as e:
        print(e, file=sys.stderr)
        return e.exit_code
    return 0


def resume(run_dir: str) -> int:
    # Different seeds everywhere: the checkpoint alone must decide what happens next.
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)
    from trainlab.training.resume import resume as do_resume

    do_resume(run_dir, progress=False)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("WORKER_THREADS", "1")))
    mode = sys.argv[1]
    if mode == "interrupt":
        raise SystemExit(interrupt(int(sys.argv[2]), json.loads(sys.argv[3])))
    raise SystemExit(resume(sys.argv[2]))
