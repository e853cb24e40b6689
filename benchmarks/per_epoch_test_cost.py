"""What evaluating the test split every epoch costs: seconds per epoch (training plus the
per-epoch evaluations, the metrics row's `seconds`) with test_every_epoch off (the default: the
validation pass only) and on (validation + test passes), on full Fashion-MNIST.

The two settings alternate run by run (off, on, on, off, ...) in one process, so a load change on
a shared machine falls on both; each run's first epoch is dropped (warm-up), and the figure is
the median of the remaining epochs of every run of a setting. Beside it, the evaluation part of
each epoch alone (`seconds - train_seconds`: the validation pass, plus the test pass when on),
whose difference is the test pass itself with the training's noise left out.

usage: python benchmarks/per_epoch_test_cost.py [--models mlp cnn-fast] [--rounds 2] [--epochs 4]
       [--threads N] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch

from trainlab.config import resolve
from trainlab.data import load_dataset
from trainlab.store.runs import environment
from trainlab.training.start import train


def epoch_seconds(model: str, every_epoch: bool, epochs: int, data, runs_dir: str, name: str) -> list[float]:
    cfg = resolve({"model": model, "epochs": epochs, "quiet": True, "runs_dir": runs_dir, "name": name,
                   **({"test_every_epoch": True} if every_epoch else {})})
    history = train(cfg, data=data, progress=False).history
    assert all(("test_acc" in r) == every_epoch for r in history)  # the setting did what it says
    return [(r["seconds"], r["seconds"] - r["train_seconds"]) for r in history[1:]]  # the first: warm-up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["mlp", "cnn-fast"])
    p.add_argument("--rounds", type=int, default=2, help="pairs of runs (off+on) per model")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default=os.environ.get("TRAINLAB_DATA") or
                   str(Path(__file__).resolve().parents[2] / "shared/data/fashion-mnist"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment()
    print(f"machine: {env['cpu']}, {env['cpu_count']} cores, {torch.get_num_threads()} threads; "
          f"torch {env['torch']}, python {env['python']}; load average {os.getloadavg()[0]:.1f} at start")
    data = load_dataset("fashion-mnist", args.data_dir)
    print("model     epoch, test off  epoch, test on  on / off  evaluation off  evaluation on  test pass")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            times = {False: [], True: []}
            for r in range(args.rounds):
                order = (False, True) if r % 2 == 0 else (True, False)  # alternate which goes first
                for every in order:
                    times[every] += epoch_seconds(model, every, args.epochs, data, tmp, f"{model}-{r}-{every}")
            off, on = (statistics.median(t for t, _ in times[k]) for k in (False, True))
            ev_off, ev_on = (statistics.median(e for _, e in times[k]) for k in (False, True))
            print(f"{model:<9} {off:>13.2f} s  {on:>12.2f} s  {on / off:>8.3f}  {ev_off:>12.3f} s  {ev_on:>11.3f} s"
                  f"  {ev_on - ev_off:>7.3f} s = {(ev_on - ev_off) / off:.1%} of an epoch"
                  f"   ({len(times[False])} + {len(times[True])} epochs)")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
