"""Batch augmentation on cnn-fast, Fashion-MNIST: the fast-cnn recipe as it is against the same
recipe with mixup, cutmix or random-resized-crop on, seeds 0..--seeds-1, in one process.

To stay affordable on a shared 2-core CPU: --per-class training images per class (default
1,000: 10,000 of the 55,000 left after 5,000 are carved out for validation), float32 (what
precision "auto" picks on a CPU without AVX512-BF16 or AMX; bf16 autocast asked for by name was 5x
slower per step there, under load), --epochs (default 5; mixup and cutmix are usually given far longer, so this is what
they do in a short budget). The test split is all 10,000 images. Reported: final-epoch test
accuracy (mean +- std over seeds) and the mean training seconds per epoch (augmentation included).

    flock /tmp/trainlab-bench.lock python benchmarks/batch_augment.py --threads 2
    python benchmarks/batch_augment.py --quick          # smoke test (1 seed, 1 epoch, 1 condition)
    python benchmarks/batch_augment.py --op-cost        # each op's time per batch of 256 vs a step's

Epoch times on a loaded, shared machine move with the load; --op-cost times each op against a
cnn-fast training step in the same loop, interleaved, so the ratio holds under load.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CONDITIONS = (("fast-cnn (hflip + flip TTA)", {}), ("+ mixup 0.2", {"mixup": 0.2}),
              ("+ cutmix 1.0", {"cutmix": 1.0}), ("+ rrc 0.35", {"rrc": 0.35}))


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
               platform.processor())
    flags = [f for f in ("avx512f", "avx512_bf16", "amx_tile") if f" {f}" in info]
    return (f"{cpu} ({', '.join(flags) or 'no AVX512/AMX'}), {os.cpu_count()} cores, {torch.get_num_threads()} "
            f"threads, torch {torch.__version__}, Python {platform.python_version()}")


def load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def op_cost(rounds: int = 30) -> None:
    """Median ms per batch of 256 (1x28x28) of each op and of one float32 cnn-fast training step,
    measured round-robin so a change in load touches all alike."""
    import time

    from trainlab import models
    from trainlab.data.augment import Augment
    from trainlab.data.batch_transforms import MixCut

    x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    g = torch.Generator().manual_seed(0)
    model = models.build("cnn-fast", [1, 28, 28], 10).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters())

    def step():
        loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    ops = {"train step (fp32)": step, "hflip": lambda: Augment(hflip=True)(x, g),
           "rrc 0.35": lambda: Augment(rrc=0.35)(x, g),
           "brightness + contrast 0.3": lambda: Augment(brightness=0.3, contrast=0.3)(x, g),
           "mixup 0.2": lambda: MixCut(10, mixup=0.2)(x, y, g), "cutmix 1.0": lambda: MixCut(10, cutmix=1.0)(x, y, g)}
    times = {k: [] for k in ops}
    for _ in range(rounds):
        for k, f in ops.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    step_ms = statistics.median(times["train step (fp32)"]) * 1e3
    print("| op (batch of 256) | ms (median) | share of a step |")
    print("|---|---|---|")
    for k, v in times.items():
        ms = statistics.median(v) * 1e3
        print(f"| {k} | {ms:.2f} | {ms / step_ms:.1%} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("TRAINLAB_DATA") or str(ROOT.parent / "shared" / "data"
                                                                                  / "fashion-mnist"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=1000, help="training images per class (0: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--op-cost", action="store_true", help="only time each op against a training step")
    args = ap.parse_args(argv)
    conditions = CONDITIONS
    if args.quick:
        args.seeds, args.epochs, conditions = 1, 1, CONDITIONS[1:2]
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("trainlab").setLevel(logging.WARNING)
    if args.op_cost:
        print(f"# {machine()}; load average (1/5/15 min) {load()}")
        op_cost()
        return 0
    from trainlab import resolve, train
    from trainlab.data import load_dataset

    data = load_dataset("fashion-mnist", args.data_dir)
    print(f"# cnn-fast, fast-cnn recipe, float32, Fashion-MNIST ({args.per_class or 'all'} training images per "
          f"class), {args.epochs} epochs, seeds 0..{args.seeds - 1}; "
          f"{machine()}; load average (1/5/15 min) at start {load()}")
    print("| recipe | test accuracy (mean +- std) | per seed | s/epoch (mean) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as runs:
        for label, extra in conditions:
            accs, secs = [], []
            for seed in range(args.seeds):
                cfg = resolve({"model": "cnn-fast", "recipe": "fast-cnn", "dataset": "fashion-mnist",
                               "epochs": args.epochs, "seed": seed, "runs_dir": runs, "quiet": True,
                               "precision": "32", "train_per_class": args.per_class,
                               "threads": torch.get_num_threads(), **extra})
                result = train(cfg, data=data, progress=False)
                accs.append(result.test_accuracy)
                secs += [row["train_seconds"] for row in result.history]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {label} | {statistics.mean(accs):.2%} +- {sd:.2%} | {', '.join(f'{a:.2%}' for a in accs)} "
                  f"| {statistics.mean(secs):.1f} |", flush=True)
    print(f"# load average at the end {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
