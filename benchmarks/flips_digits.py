"""Does flipping digits hurt? cnn-fast on the mnist-10k subset with the data-aware default
(fast-cnn's horizontal flips and flip TTA off: a mirrored digit is not a digit) against the
same recipe with the flips forced on, seeds 0..--seeds-1, in one run.

The subset: ../shared/data/mnist-10k (or --data-dir), 8,004 training images (1,000 carved out
for validation), the 1,996-image held-out test split. Reported: final-epoch test accuracy,
mean +- std over seeds ("MNIST 10k subset, held-out split").

    flock /tmp/trainlab-bench.lock python benchmarks/flips_digits.py --threads 2
    python benchmarks/flips_digits.py --quick                     # smoke test (1 seed, 1 epoch)
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist-10k"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("trainlab").setLevel(logging.WARNING)
    from trainlab import resolve, train

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = [f for f in ("avx512f", "avx512_bf16", "amx_tile") if f in Path("/proc/cpuinfo").read_text()]
    print(f"# cnn-fast on mnist-10k, {args.epochs} epochs, seeds 0..{args.seeds - 1}; {cpu} "
          f"({', '.join(flags) or 'no AVX512/AMX'}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    rows = {}
    with tempfile.TemporaryDirectory() as runs:
        for label, extra in (("data-aware default (flips off)", {}),
                             ("flips forced on (--hflip --tta-flip)", {"hflip": True, "tta_flip": True})):
            accs = []
            for seed in range(args.seeds):
                cfg = resolve({"model": "cnn-fast", "dataset": f"idx:{args.data_dir}", "epochs": args.epochs,
                               "val_size": 1000, "seed": seed, "runs_dir": runs, "quiet": True, **extra})
                assert cfg.train.hflip == bool(extra)
                accs.append(train(cfg, progress=False).test_accuracy)
            rows[label] = accs
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {label} | {statistics.mean(accs):.2%} +- {sd:.2%} | {', '.join(f'{a:.2%}' for a in accs)} |")
    a, b = (statistics.mean(v) for v in rows.values())
    print(f"difference (default - flips on): {100 * (a - b):+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
