"""Imbalanced classes: plain vs --class-weights auto vs --balanced-sampler on Fashion-MNIST.

Three classes (pullover, coat, shirt: the three the others are most confused with) keep a
seeded 5% of their training images; the test split stays balanced (1,000 images a class), so
each class's test accuracy is its recall. The mlp trains with its recipe (fast: AdamW
one-cycle, batch 256, label smoothing 0.1) for 10 epochs (its recipe's own), per seed and per method; the
validation split (5,000, stratified) is carved from the imbalanced training split, as a user's
would be. Reported per method, mean +- std over the seeds: the minority classes' recall, their
mean, the majority classes' mean recall, and overall test accuracy; with the machine (CPU
model, AVX-512/AMX flags), torch version and load averages.

    python benchmarks/imbalance.py                         # 3 seeds x 3 methods, 10 epochs (~5 min at load 9)
    python benchmarks/imbalance.py --seeds 1 --epochs 1    # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import trainlab
from trainlab.data import from_arrays
from trainlab.store.runs import cpu_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
MINORITY = (2, 4, 6)  # pullover, coat, shirt
KEEP = 0.05
METHODS = {"plain": {}, "class-weights auto": {"class_weights": "auto"},
           "balanced-sampler": {"balanced_sampler": True}}


def imbalanced(data, seed: int = 0):
    """`data` with each MINORITY class cut to a seeded KEEP of its training images."""
    y = data.train_y.numpy()
    keep = np.ones(len(y), dtype=bool)
    rng = np.random.default_rng(seed)
    for c in MINORITY:
        rows = np.flatnonzero(y == c)
        drop = rng.permutation(rows)[int(round(KEEP * len(rows))):]
        keep[drop] = False
    return from_arrays(data.train_x[torch.from_numpy(keep)], data.train_y[torch.from_numpy(keep)],
                       data.test_x, data.test_y, classes=data.classes, name="fashion-mnist-imbalanced")


def machine() -> str:
    flags = ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(line for line in lines if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    avx512 = "yes" if " avx512f" in flags else "no"
    amx = "yes" if " amx_tile" in flags else "no"
    return (f"{cpu_model()}, {os.cpu_count()} cores, AVX512 {avx512}, AMX {amx}; torch {torch.__version__}, "
            f"Python {sys.version.split()[0]}")


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def ms(values, pct=True) -> str:
    f = 100 if pct else 1
    if len(values) == 1:
        return f"{f * values[0]:.1f}"
    return f"{f * statistics.mean(values):.1f} ± {f * statistics.stdev(values):.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write every run's numbers here")
    args = p.parse_args()
    full = trainlab.load_dataset("fashion-mnist", data_dir=DATA)
    data = imbalanced(full)
    counts = torch.bincount(data.train_y, minlength=10).tolist()
    print(f"machine: {machine()}\nload average at the start: {load()}")
    print(f"training images per class (before the 5,000 validation images are carved): {counts}")
    rows, t0 = [], time.time()
    with tempfile.TemporaryDirectory() as runs_dir:
        for seed in range(args.seeds):
            for method, extra in METHODS.items():
                start = time.time()
                cfg = {"model": "mlp", "epochs": args.epochs, "seed": seed, "threads": args.threads,
                       "quiet": True, "runs_dir": runs_dir, **extra}
                r = trainlab.train(cfg, data=data, progress=False)
                recall = [pc["accuracy"] for pc in r.test["per_class"]]
                rows.append({"method": method, "seed": seed, "accuracy": r.test["accuracy"], "recall": recall,
                             "seconds": time.time() - start, "load": load()})
                print(f"seed {seed} {method:20s} test {100 * r.test['accuracy']:.2f}%  minority recall "
                      + " ".join(f"{100 * recall[c]:.1f}" for c in MINORITY)
                      + f"  ({rows[-1]['seconds']:.0f} s, load {rows[-1]['load']})", flush=True)
    names = full.classes
    print(f"\nload average at the end: {load()}; {time.time() - t0:.0f} s in all\n")
    head = ["method", *[f"{names[c]} recall %" for c in MINORITY], "minority mean %", "majority mean %",
            "test accuracy %", "s / run"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        cells = [ms([r["recall"][c] for r in mine]) for c in MINORITY]
        cells.append(ms([statistics.mean(r["recall"][c] for c in MINORITY) for r in mine]))
        majority = [c for c in range(10) if c not in MINORITY]
        cells.append(ms([statistics.mean(r["recall"][c] for c in majority) for r in mine]))
        cells.append(ms([r["accuracy"] for r in mine]))
        cells.append(f"{statistics.mean(r['seconds'] for r in mine):.0f}")
        print(f"| {method} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "counts": counts, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
