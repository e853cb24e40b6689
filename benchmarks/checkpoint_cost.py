"""What checkpointing costs: save/load time and file size per model, and the overhead of the
per-epoch saves (best.pt + last.pt, atomic with fsync, hashed) as a share of a cnn epoch.

usage: python benchmarks/checkpoint_cost.py [--threads N] [--repeats 5] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainlab.config import resolve
from trainlab.data import load_dataset
from trainlab.store.manifest import CheckpointDir
from trainlab.store.schema import load_checkpoint
from trainlab.store.runs import environment
from trainlab.training.session import Session


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data-dir", default=os.environ.get("TRAINLAB_DATA") or
                   str(Path(__file__).resolve().parents[2] / "shared/data/fashion-mnist"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment()
    print(f"machine: {env['cpu']}, {env['cpu_count']} cores, {torch.get_num_threads()} threads; "
          f"torch {env['torch']}, python {env['python']}")
    data = load_dataset("fashion-mnist", args.data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("mlp", "mlp-reg", "cnn"):
            cfg = resolve({"model": model, "epochs": 1, "quiet": True, "runs_dir": tmp, "name": model})
            s = Session(cfg, data, progress=False)
            s.start_run_dir()
            if model == "cnn":  # one real epoch, so optimizer state is full and we have its time
                s.run()
                epoch_s = s.state.history[-1]["train_seconds"]
            folder = CheckpointDir(Path(tmp) / model / "ckpt-bench")
            ckpt = s.state_dict()
            save_s = median_time(lambda: folder.save("last.pt", ckpt, epoch=1, global_step=1), args.repeats)
            load_s = median_time(lambda: load_checkpoint(folder.folder / "last.pt"), args.repeats)
            size = (folder.folder / "last.pt").stat().st_size
            rows.append((model, size, save_s, load_s))
    print("\n| model | file size | save (atomic, fsync, sha256) | load (weights_only) |")
    print("|---|---|---|---|")
    for model, size, save_s, load_s in rows:
        print(f"| {model} | {size / 2**20:.2f} MiB | {1000 * save_s:.1f} ms | {1000 * load_s:.1f} ms |")
    cnn_save = rows[-1][2]
    per_epoch = 2 * cnn_save  # best.pt (when improved) + last.pt
    print(f"\ncnn: epoch {epoch_s:.1f} s, per-epoch checkpointing (best + last) {1000 * per_epoch:.0f} ms "
          f"= {100 * per_epoch / epoch_s:.2f}% of the epoch (target < 3%)")


if __name__ == "__main__":
    main()
