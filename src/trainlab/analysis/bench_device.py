"""Does the GPU help for this job? Measured, not guessed (`trainlab bench-device` prints it).

Times a fixed number of training steps of one model on every available device, two ways:
  textbook  batches live on the CPU and are copied with .to(device) every step
  resident  the whole data set sits on the device (DeviceLoader); a batch is one index op
and turns the timings into a recommendation that names the three factors that decide it:
model size (work per sample), batch size (work per step) and transfer overhead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from trainlab import models
from trainlab.data import DeviceLoader
from trainlab.metrics import percent
from trainlab.recipes import get_recipe
from trainlab.training.optim import build_optimizer


@dataclass
class Timing:
    device: str
    way: str  # "textbook" or "resident"
    ms_per_step: float
    transfer_ms: float  # of which host-to-device copying (textbook way only)


def available_devices() -> list[str]:
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devs.append("mps")
    return devs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_steps(model_name: str, batch_size: int, device: str, way: str, steps: int = 30,
               warmup: int = 5, input_shape=(1, 28, 28), num_classes: int = 10) -> Timing:
    """Milliseconds per training step (forward, backward, fused AdamW step) on `device`."""
    dev = torch.device(device)
    torch.manual_seed(0)
    n = batch_size * (steps + warmup)
    images = torch.randint(0, 256, (n, *input_shape), dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,))
    model = models.build(model_name, input_shape, num_classes).to(dev)
    opt = build_optimizer(model, get_recipe("fast"))
    loss_fn = nn.CrossEntropyLoss()
    mean, std = [0.5] * input_shape[0], [0.25] * input_shape[0]
    if way == "resident":
        loader = DeviceLoader(images, labels, batch_size, mean=mean, std=std, device=dev)
        batches = iter(loader)
        next_batch = lambda: next(batches)  # noqa: E731
    else:
        cpu_loader = DeviceLoader(images, labels, batch_size, mean=mean, std=std, device="cpu")
        cpu_batches = iter(cpu_loader)

        def next_batch():
            x, y = next(cpu_batches)
            t0 = time.perf_counter()
            x, y = x.to(dev), y.to(dev)  # the per-batch copy every tutorial writes
            _sync(dev)
            copy_times.append(time.perf_counter() - t0)
            return x, y
    copy_times: list[float] = []

    def step():
        x, y = next_batch()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(dev)
    copy_times.clear()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    elapsed = time.perf_counter() - t0
    transfer = 1000 * sum(copy_times) / steps if copy_times else 0.0
    return Timing(device, way, 1000 * elapsed / steps, transfer)


def recommend(timings: list[Timing], parameters: int, batch_size: int) -> str:
    """A recommendation from measured timings, naming model size, batch size and transfer."""
    def best(dev_type: str, way: str = "resident") -> Timing | None:
        return next((t for t in timings if t.device.startswith(dev_type) and t.way == way), None)

    cpu = best("cpu")
    size = f"model size: {parameters:,} parameters ({'small' if parameters < 1_000_000 else 'large'})"
    batch = f"batch size: {batch_size} ({'small' if batch_size < 256 else 'large'})"
    gpu = next((t for t in timings if not t.device.startswith("cpu") and t.way == "resident"), None)
    if gpu is None:
        return (f"No GPU found: these are CPU figures only ({cpu.ms_per_step:.1f} ms/step resident). "
                f"Factors: {size}; {batch}; transfer overhead: none on the CPU.")
    textbook = next((t for t in timings if t.device == gpu.device and t.way == "textbook"), None)
    speedup = cpu.ms_per_step / gpu.ms_per_step
    share = textbook.transfer_ms / textbook.ms_per_step if textbook and textbook.ms_per_step else 0.0
    transfer = (f"transfer overhead: per-batch copies take {percent(share, 0)} of a textbook step on "
                f"{gpu.device}")
    if speedup < 1.2:
        verdict = (f"The GPU does not help here: {gpu.device} is only {speedup:.2f}x the CPU's speed. "
                   "The model and batch are too small to keep the GPU busy; per-step launch and sync "
                   "costs dominate. Stay on the CPU, or use a bigger batch/model.")
    else:
        verdict = f"Use the GPU: {gpu.device} trains {speedup:.1f}x faster than the CPU."
        if share > 0.2:
            verdict += (" Keep the data resident on it (trainlab's DeviceLoader does): copying "
                        f"each batch costs {percent(share, 0)} of the step.")
    return f"{verdict}\nFactors: {size}; {batch}; {transfer}."


def run(model_name: str = "cnn", batch_size: int = 256, steps: int = 30) -> tuple[list[Timing], str, int]:
    timings = []
    for dev in available_devices():
        for way in ("textbook", "resident"):
            if dev == "cpu" and way == "textbook":
                continue  # nothing to copy on the CPU
            timings.append(time_steps(model_name, batch_size, dev, way, steps=steps))
    params = models.count_parameters(models.build(model_name))
    return timings, recommend(timings, params, batch_size), params
