"""Ablation of cnn-fast's CPU recipe on Fashion-MNIST: each trick switched off (or one added)
at one fixed schedule, 2+ seeds each, in one script run on the same machine.

The base is what trainlab recommends for cnn-fast (time_to_accuracy.RUN_SETTINGS: the
`fast-cnn` recipe, channels_last). Each variant changes one thing; the table gives its
training seconds, final-epoch validation and test accuracy (means over the seeds) and the
change against the base, as airbench's ablation does. No run is stopped when an accuracy is
seen: every variant runs the whole fixed schedule.

    python benchmarks/cnn_ablation.py --epochs 4 --seeds 2
    python benchmarks/cnn_ablation.py --only base,no-flips --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_accuracy import DEFAULT_DATA, load_average, machine, mean_std, trainlab_run  # noqa: E402

from trainlab.data import load_dataset  # noqa: E402

# name -> (config overrides on top of the base, process setting); one change each
VARIANTS: dict[str, tuple[dict, str | None]] = {
    "base": ({}, None),
    "no label smoothing": ({"label_smoothing": 0.0}, None),
    "no flips, no flip TTA": ({"hflip": False, "tta_flip": False}, None),
    "flips, no flip TTA": ({"tta_flip": False}, None),
    "no channels_last": ({"channels_last": False}, None),
    "+ EMA 0.99": ({"ema": 0.99}, None),
    "batch 512, lr 6e-3": ({"batch_size": 512, "lr": 6e-3}, None),
    "lr 6e-3": ({"lr": 6e-3}, None),
    "+ flush denormals": ({}, "flush_denormal"),
    "+ torch.compile": ({"compile": True}, None),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="cnn-fast")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--only", help="comma-separated variant names (default: all)")
    p.add_argument("--threads", type=int)
    p.add_argument("--data-dir", default=os.environ.get("TRAINLAB_DATA") or str(DEFAULT_DATA))
    p.add_argument("--json", dest="json_out")
    args = p.parse_args()
    names = [n.strip() for n in args.only.split(",")] if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}: choose from {list(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from trainlab.training.runtime import apply_cpu_tuning

    apply_cpu_tuning()
    data = load_dataset("fashion-mnist", args.data_dir)
    info = machine()
    print(f"# ablation: {args.model}, {args.epochs} epochs, seeds 0..{args.seeds - 1}")
    print(f"machine: CPU {info['cpu']} | {info['cores']} cores | {info['threads']} torch threads | "
          f"torch {info['torch']} | load average {info['load_average_start']}", flush=True)
    print("\n| variant | training s | s/epoch | val acc | test acc | test vs base | time vs base | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    rows, base = {}, None
    with tempfile.TemporaryDirectory(prefix="ablation-") as runs_dir:
        for name in names:
            overrides, process = VARIANTS[name]
            if process == "flush_denormal":
                torch.set_flush_denormal(True)
            try:
                runs = [trainlab_run(args.model, data, s, args.epochs, args.threads, runs_dir, overrides)
                        for s in range(args.seeds)]
            finally:
                torch.set_flush_denormal(False)
            t = mean_std([r["train_s"] for r in runs])
            val, test = mean_std([r["val_acc"] for r in runs]), mean_std([r["test_acc"] for r in runs])
            rows[name] = {"runs": runs, "train_s": t, "val_acc": val, "test_acc": test}
            if name == "base":
                base = rows[name]
            d_acc = f"{100 * (test[0] - base['test_acc'][0]):+.2f}" if base and name != "base" else "-"
            d_t = f"{t[0] / base['train_s'][0]:.2f}x" if base and name != "base" else "-"
            print(f"| {name} | {t[0]:.1f} | {t[0] / args.epochs:.2f} | {100 * val[0]:.2f} ± {100 * val[1]:.2f} | "
                  f"{100 * test[0]:.2f} ± {100 * test[1]:.2f} | {d_acc} | {d_t} | {load_average()} |", flush=True)
    print(f"\nload average at the end: {load_average()}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": info, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
