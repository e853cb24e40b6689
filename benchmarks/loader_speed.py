"""One training epoch of `mlp` on Fashion-MNIST: the textbook input pipeline vs DeviceLoader.

  (a) textbook: a torch Dataset whose __getitem__ returns one normalized float tensor (from
      the uint8 image), torch DataLoader(shuffle=True), .to(device) per batch, plain Adam
  (r) a plain resident-tensor loop: the split normalized once as float32, one randperm per
      epoch, plain Adam (a calibration point: the issue's reference measured 1.27 s here)
  (b) trainlab's DeviceLoader, same model and plain Adam: isolates the loader's effect
  (c) DeviceLoader + fused Adam (trainlab.training.optim.build_optimizer)
  (d) (c) in the precision trainlab's `auto` picks for mlp here (bf16 autocast on a CPU with
      fast bf16, measured not to cost accuracy; float32 elsewhere): how trainlab trains

All in one process, on the full 60,000-image training split, Adam lr 1e-3. Each variant
gets a fresh seeded model, a short warm-up, then --epochs timed epochs; the median counts
(--best-of: the fastest, which is steadier when other jobs share the machine).

    python benchmarks/loader_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainlab.data import DeviceLoader, load_dataset
from trainlab.devices import pick_device
from trainlab.models import build
from trainlab.recipes import get_recipe
from trainlab.store.runs import cpu_model
from trainlab.training.optim import build_optimizer
from trainlab.training.precision import resolve_precision

MEAN, STD = 0.2861, 0.3528
WARMUP_STEPS = 50
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


class TextbookDataset(Dataset):
    """What tutorials write: one sample per call, normalized on the fly."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images  # N,1,28,28 uint8
        self.labels = labels.tolist()  # plain ints, as torchvision's datasets return them

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return (self.images[i].float() / 255 - MEAN) / STD, self.labels[i]


class ResidentTensors:
    """(r): the whole split normalized once as float32 on the device, batches by indexing."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device):
        self.x = ((images.float() / 255 - MEAN) / STD).to(device)
        self.y = labels.to(device)
        self.batch_size = batch_size

    def __iter__(self):
        for idx in torch.randperm(len(self.y), device=self.x.device).split(self.batch_size):
            yield self.x[idx], self.y[idx]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_seconds(model, optimizer, batches, device, to_device: bool, max_steps=None,
                  autocast=None) -> float:
    """One pass of forward, loss, backward, step; `max_steps` cuts it short (warm-up)."""
    loss_fn = nn.CrossEntropyLoss()
    sync(device)
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        if to_device:  # the textbook's per-batch copy (a no-op on the CPU)
            x, y = x.to(device), y.to(device)
        with autocast or contextlib.nullcontext():
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - t0


def measure(variant: str, data, batch_size: int, device, epochs: int, stat=statistics.median) -> float:
    """Seconds per epoch (median, or `stat`) of one variant at one batch size."""
    torch.manual_seed(0)
    model = build("mlp", data.input_shape, data.num_classes).to(device)
    if variant == "textbook":
        batches = DataLoader(TextbookDataset(data.train_x, data.train_y), batch_size=batch_size, shuffle=True)
        to_device = True
    elif variant == "resident":
        batches, to_device = ResidentTensors(data.train_x, data.train_y, batch_size, device), False
    else:
        batches = DeviceLoader(data.train_x, data.train_y, batch_size, mean=MEAN, std=STD,
                               device=device, shuffle=True, seed=0)
        to_device = False
    autocast = resolve_precision("auto", device, "mlp").autocast(device) if variant == "trainlab" else None
    if variant in ("device+fused", "trainlab"):
        optimizer = build_optimizer(model, get_recipe("textbook"))  # fused Adam, as trainlab trains
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # plain (for-loop) Adam
    epoch_seconds(model, optimizer, batches, device, to_device, max_steps=WARMUP_STEPS, autocast=autocast)
    times = []
    for epoch in range(epochs):
        if isinstance(batches, DeviceLoader):
            batches.set_epoch(epoch)
        times.append(epoch_seconds(model, optimizer, batches, device, to_device, autocast=autocast))
    return stat(times)


def machine(device) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    gpu = f" | GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"CPU {cpu_model()} | {os.cpu_count()} cores | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads | Python {platform.python_version()} | "
            f"device {device}{gpu} | load average {load}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per variant (median, or best with --best-of)")
    p.add_argument("--best-of", action="store_true", help="report the fastest epoch, not the median")
    p.add_argument("--batch-sizes", default="64,256,512")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto...")
    p.add_argument("--data-dir", default=os.environ.get("TRAINLAB_DATA") or str(DEFAULT_DATA))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    data = load_dataset("fashion-mnist", args.data_dir)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    stat, stat_name = (min, "best") if args.best_of else (statistics.median, "median")

    print(machine(device))
    print(f"mlp, Adam lr 1e-3, {len(data.train_y)} training images per epoch, "
          f"{stat_name} of {args.epochs} epoch(s) after a {WARMUP_STEPS}-step warm-up\n")
    auto = resolve_precision("auto", device, "mlp").name
    print("| batch | (a) textbook | (r) resident loop | (b) DeviceLoader | (c) DeviceLoader + fused Adam "
          f"| (d) (c) + precision auto ({auto}) | (a)/(b) | (a)/(c) | (a)/(d) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for bs in sizes:
        a, r, b, c, d = (measure(v, data, bs, device, args.epochs, stat)
                         for v in ("textbook", "resident", "device", "device+fused", "trainlab"))
        print(f"| {bs} | {a:.2f} s | {r:.2f} s | {b:.2f} s | {c:.2f} s | {d:.2f} s | {a / b:.2f}x "
              f"| {a / c:.2f}x | {a / d:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
