"""A trainlab epoch against the model's own compute floor, in one run.

The floor ("model alone"): the same model (channels_last where trainlab uses it), the same
fused AdamW at the same batch size and precision, stepping over batches that were normalized
and made beforehand: nothing but forward, loss, backward and step. trainlab's epoch: `train()`
with the model's recipe, its `train_seconds` (the loader, on-device augmentation, the epoch's
loss and accuracy kept on the device, the hooks). Rounds alternate floor / trainlab, so a load
from other processes falls on both alike; the claim is the ratio of the medians.

    python benchmarks/compute_floor.py --model cnn-fast --epochs 2 --rounds 3
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_accuracy import DEFAULT_DATA, RUN_SETTINGS, machine  # noqa: E402

from trainlab import models  # noqa: E402
from trainlab.config import resolve  # noqa: E402
from trainlab.data import load_dataset, stratified_split  # noqa: E402
from trainlab.recipes import get_recipe  # noqa: E402
from trainlab.training.precision import resolve_precision  # noqa: E402
from trainlab.training.runtime import apply_cpu_tuning  # noqa: E402
from trainlab.training.start import train  # noqa: E402


def floor_epochs(model_name: str, data, train_idx, epochs: int, batch_size: int, lr: float,
                 channels_last: bool) -> list[float]:
    """Seconds per epoch of the bare step over premade batches."""
    torch.manual_seed(0)
    model = models.build(model_name, data.input_shape, data.num_classes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    precision = resolve_precision("auto", torch.device("cpu"), model_name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    x = data.train_x[train_idx].float().div_(255).sub_(data.mean[0]).div_(data.std[0])
    y = data.train_y[train_idx]
    batches = [(x[i:i + batch_size].contiguous(memory_format=fmt), y[i:i + batch_size])
               for i in range(0, len(y), batch_size)]
    loss_fn = nn.CrossEntropyLoss()
    seconds = []
    model.train()
    for _ in range(epochs):
        t0 = time.perf_counter()
        for xb, yb in batches:
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast(torch.device("cpu")):
                loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - t0)
    return seconds


def trainlab_epochs(model_name: str, data, epochs: int, runs_dir: str, overrides: dict) -> list[float]:
    cfg = resolve({"model": model_name, "epochs": epochs, "quiet": True, "runs_dir": runs_dir,
                   **RUN_SETTINGS.get(model_name, {"recipe": "fast"}), **overrides})
    result = train(cfg, data=data, progress=False)
    return [r["train_seconds"] for r in result.history]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="cnn-fast")
    p.add_argument("--epochs", type=int, default=2, help="epochs per measurement (the first one is a warm-up)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-dir", default=os.environ.get("TRAINLAB_DATA") or str(DEFAULT_DATA))
    args = p.parse_args()
    apply_cpu_tuning()  # trainlab's process settings, for both
    data = load_dataset("fashion-mnist", args.data_dir)
    settings = RUN_SETTINGS.get(args.model, {"recipe": "fast"})
    recipe = get_recipe(settings["recipe"])
    train_idx, _ = stratified_split(data.train_y, 5000, 0)
    info = machine()
    print(f"machine: CPU {info['cpu']} | {info['cores']} cores | {info['threads']} torch threads | torch {info['torch']} "
          f"| load average {info['load_average_start']}")
    print(f"model {args.model}, {settings}, batch {recipe.batch_size}, {args.epochs} epochs per measurement "
          f"(the later ones counted), {args.rounds} rounds", flush=True)
    ways = {
        "model alone (the floor)": lambda d: floor_epochs(args.model, data, train_idx, args.epochs, recipe.batch_size,
                                                          recipe.lr, settings.get("channels_last", False)),
        "trainlab, its recipe": lambda d: trainlab_epochs(args.model, data, args.epochs, d, {}),
        "trainlab, no flips": lambda d: trainlab_epochs(args.model, data, args.epochs, d,
                                                        {"hflip": False, "tta_flip": False}),
    }
    got: dict[str, list[float]] = {k: [] for k in ways}
    with tempfile.TemporaryDirectory(prefix="floor-") as runs_dir:
        for r in range(args.rounds):
            for name, way in ways.items():
                seconds = way(runs_dir)
                got[name] += seconds[1:] if len(seconds) > 1 else seconds
                print(f"round {r + 1} {name:<24} " + " ".join(f"{s:.2f}" for s in seconds)
                      + f"  load {os.getloadavg()[0]:.2f}", flush=True)
    floor = statistics.median(got["model alone (the floor)"])
    print("\n| epoch | median s | vs the floor |\n|---|---:|---:|")
    for name, values in got.items():
        print(f"| {name} | {statistics.median(values):.2f} | {statistics.median(values) / floor:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
