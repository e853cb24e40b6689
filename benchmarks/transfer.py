"""Transfer: does a cnn-fast pretrained on Fashion-MNIST help on MNIST digits (the mnist-10k
subset) when there are few labelled images?

1. Pretrain cnn-fast on Fashion-MNIST (real data: TRAINLAB_DATA, else
   ../shared/data/fashion-mnist) with its recipe (fast-cnn) for --pretrain-epochs epochs, once
   (seed 0); save its body as a plain state_dict without the head (9 of 11 tensors: the
   classifier is re-initialized, as it would be for another class count).
2. On mnist-10k (../shared/data/mnist-10k; 8,004 training images, 1,000 of them carved out
   for validation, the 1,996-image held-out test split), with 10, 100 and all (~700) training
   images per class (train_per_class, seeded), train for the same --epochs:
     scratch   a fresh cnn-fast
     finetune  init_from the body, everything trained
     frozen    init_from the body, body frozen (BatchNorm in eval mode) for the first half of
               the epochs, then unfrozen (unfreeze_at)
   each with seeds 0..--seeds-1 (the seed draws the subset, the head's init and the order).
   Recipe fast-cnn without the flips (digits are not mirror-symmetric: hflip and tta_flip
   off), batch 32 (the 10-per-class subset has only 100 images).

Reported: final-epoch test accuracy, mean +- std over seeds, and the mean wall time of one
run (train() call: training + per-epoch evaluation + checkpoints).

    flock /tmp/trainlab-bench.lock python benchmarks/transfer.py --threads 2      # ~6 min, 2 cores
    python benchmarks/transfer.py --quick                                         # smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import trainlab  # noqa: E402
from trainlab.store.checkpoint import save_checkpoint  # noqa: E402
from trainlab.store.runs import cpu_model  # noqa: E402
from trainlab.store.schema import load_checkpoint  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--pretrain-epochs", type=int, default=5)
    ap.add_argument("--per-class", default="10,100,0", help="0 = all")
    ap.add_argument("--methods", default="scratch,finetune,frozen")
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, 1 pretrain epoch")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.pretrain_epochs, args.per_class = 1, 2, 1, "10"
    torch.set_num_threads(args.threads)
    fashion = os.environ.get("TRAINLAB_DATA") or str(SHARED / "fashion-mnist")
    digits = str(SHARED / "mnist-10k")
    work = Path(tempfile.mkdtemp(prefix="trainlab-transfer-"))
    print(f"# machine: {cpu_model()}, {os.cpu_count()} cores, "
          f"{args.threads} threads; torch {torch.__version__}; trainlab {trainlab.__version__}")

    t0 = time.perf_counter()
    pre = trainlab.train({"model": "cnn-fast", "dataset": "fashion-mnist", "data_dir": fashion,
                          "epochs": args.pretrain_epochs, "seed": 0, "threads": args.threads,
                          "runs_dir": str(work), "name": "pretrain", "quiet": True}, progress=False)
    pre_s = time.perf_counter() - t0
    state = load_checkpoint(pre.run_dir / "model.pt")["model"]
    head = [k for k in state if k.startswith("15.")]  # cnn-fast's last Linear
    body = work / "fashion-body.pt"
    save_checkpoint(body, {k: v for k, v in state.items() if k not in head})
    print(f"pretrain: cnn-fast on Fashion-MNIST, {args.pretrain_epochs} epochs, test "
          f"{pre.test_accuracy:.2%} in {pre_s:.0f} s; body saved without {', '.join(head)}")

    common = {"model": "cnn-fast", "dataset": "mnist-10k", "data_dir": digits, "epochs": args.epochs,
              "val_size": 1000, "batch_size": 32, "hflip": False, "tta_flip": False,
              "threads": args.threads, "runs_dir": str(work), "quiet": True}
    methods = {
        "scratch": {},
        "finetune": {"init_from": str(body)},
        "frozen": {"init_from": str(body), "freeze": "body", "unfreeze_at": args.epochs // 2 + 1},
    }
    rows = []
    for per_class in [int(x) for x in args.per_class.split(",")]:
        for method, extra in [(m, methods[m]) for m in args.methods.split(",")]:
            accs, secs = [], []
            for seed in range(args.seeds):
                t = time.perf_counter()
                r = trainlab.train({**common, **extra, "seed": seed, "train_per_class": per_class,
                                    "name": f"{method}-{per_class}-{seed}"}, progress=False)
                secs.append(time.perf_counter() - t)
                accs.append(100 * r.test_accuracy)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            label = "all" if per_class == 0 else str(per_class)
            rows.append((label, method, statistics.mean(accs), sd, statistics.mean(secs)))
            print(f"  per class {label:>3}  {method:<8}  {statistics.mean(accs):6.2f} +- {sd:4.2f}%  "
                  f"{statistics.mean(secs):5.1f} s/run  ({', '.join(f'{a:.2f}' for a in accs)})", flush=True)
    print("\n| images per class | from scratch | fine-tuned (all layers) | frozen body, unfrozen at "
          f"epoch {args.epochs // 2 + 1} |")
    print("|---|---|---|---|")
    for label in dict.fromkeys(r[0] for r in rows):
        cells = {m: f"{a:.2f} ± {s:.2f}% ({t:.1f} s)" for lab, m, a, s, t in rows if lab == label}
        print(f"| {label} | " + " | ".join(cells.get(m, "-") for m in methods) + " |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; runs in {work}")


if __name__ == "__main__":
    main()
