"""Time to accuracy on Fashion-MNIST: the textbook loop vs trainlab's recipe, in one run.

For each model, on the same machine in the same process:

  textbook  the loop every tutorial writes: a torch Dataset that normalizes one uint8 image
            per __getitem__, DataLoader(batch_size=64, shuffle=True), `.to(device)` per
            batch, Adam lr 1e-3 (mlp-reg: AdamW, weight decay 1e-4), no schedule, 10 epochs;
            test accuracy of the final epoch. It trains on the same 55,000 images as
            trainlab (the 5,000 validation images carved out). `cnn-fast` and `resnet`
            are new designs without a textbook figure: they are compared with the
            textbook `cnn`.
  trainlab  trainlab.train() with the model's recommended settings (RUN_SETTINGS below:
            the recipe preset plus channels_last / compile), once per fixed schedule in the
            epochs list and per seed. Every run is a complete fixed schedule (the one-cycle
            schedule is planned for its epochs); nothing stops when the test accuracy is
            seen to cross a threshold.

Reported per schedule: the training time (the sum of the epochs' training seconds;
torch.compile's compile time falls in the first epoch and is included), the wall time of the
whole train() call (setup, per-epoch val/test evaluation, checkpoints), the final epoch's
validation and test accuracy as mean +- std over seeds, and the speed-up over the textbook
run (textbook training time / trainlab training time). The test accuracy is that of the
model the run keeps (the EMA weights when the recipe uses EMA; no epoch or model is chosen
by test accuracy). "Time to X%" is the training time of the shortest schedule in the list
whose final-epoch test accuracy, averaged over the seeds, reaches X.

The textbook reference runs first, before trainlab's malloc tuning (trainlab.training.runtime,
--malloc-tuning) touches the process, so the reference runs as a textbook user's would.
Time only on a quiet machine: with other jobs on the cores, two OpenMP threads wait for a
descheduled sibling on every op (a 3-epoch textbook mlp took over 380 s at load 3); use
--threads 1 there, and read the load averages printed with every row.

    python benchmarks/time_to_accuracy.py --threads 2                 # the full table (~35 min, quiet 2 cores)
    python benchmarks/time_to_accuracy.py --models mlp --seeds 3 --epochs-list 6,8,10
    python benchmarks/time_to_accuracy.py --models resnet --resnet-budget 600
    python benchmarks/time_to_accuracy.py --quick                     # a smoke test, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import trainlab
from trainlab import models
from trainlab.config import resolve
from trainlab.data import from_arrays, load_dataset, stratified_split
from trainlab.store.runs import cpu_model
from trainlab.training.start import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from textbook_mlp import accuracy_on, train_epochs  # noqa: E402  (the tutorial's loop, one copy)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"

# What trainlab recommends for each model on a CPU (see benchmarks/RESULTS.md for the
# measurements behind each choice). Config keys: a recipe preset plus run settings.
RUN_SETTINGS: dict[str, dict] = {
    "mlp": {"recipe": "fast"},
    "mlp-reg": {"recipe": "fast"},
    "cnn": {"recipe": "fast-cnn", "channels_last": True},
    "cnn-fast": {"recipe": "fast-cnn", "channels_last": True},
    # resnet in a fixed CPU budget: width 16 in bf16 (35 epochs in 10 minutes) beat width 32 in
    # bf16 (13 epochs) and width 16 in fp32 (23 epochs) on validation. bf16 is asked for
    # explicitly: at equal *epochs* it was not shown equal to fp32, so `auto` keeps fp32.
    "resnet": {"recipe": "resnet", "channels_last": True, "precision": "bf16-mixed",
               "model_kwargs": {"width": 16}},
}
# Fixed schedules tried per model (epochs); --epochs-list overrides them for every model.
EPOCHS: dict[str, list[int]] = {
    "mlp": [6, 7, 8, 10],
    "mlp-reg": [8, 10, 15],
    "cnn": [10, 15],
    "cnn-fast": [6, 8, 10, 15],
    "resnet": [],  # sized from --resnet-budget
}
# Thresholds to report "time to X%" for (the targets and the textbook's figures).
TARGETS = {"mlp": [89.7, 90.0], "mlp-reg": [89.9, 90.5], "cnn": [92.6, 93.0, 93.5],
           "cnn-fast": [92.6, 93.0, 93.5], "resnet": [93.0, 94.0, 95.5]}
TEXTBOOK_OF = {"mlp": "mlp", "mlp-reg": "mlp-reg", "cnn": "cnn", "cnn-fast": "cnn", "resnet": "cnn"}


# ---------------------------------------------------------------- the textbook loop

class TextbookDataset(Dataset):
    """One sample per call, normalized on the fly (what ToTensor + Normalize do)."""

    def __init__(self, images, labels, mean, std):
        self.images, self.labels = images, labels.tolist()  # plain ints, like torchvision's
        self.mean, self.std = mean, std

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return (self.images[i].float() / 255 - self.mean) / self.std, self.labels[i]


def textbook_run(model_name: str, data, train_idx, seed: int, epochs: int, device="cpu") -> dict:
    """The plain loop, written out as a tutorial writes it."""
    torch.manual_seed(seed)
    mean, std = float(data.mean[0]), float(data.std[0])
    train_set = TextbookDataset(data.train_x[train_idx], data.train_y[train_idx], mean, std)
    test_set = TextbookDataset(data.test_x, data.test_y, mean, std)
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=1000)
    model = models.build(model_name, data.input_shape, data.num_classes).to(device)
    if model_name == "mlp-reg":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    epoch_seconds = train_epochs(model, train_loader, optimizer, epochs, device)
    return {"seed": seed, "epochs": epochs, "train_s": sum(epoch_seconds),
            "epoch_s": epoch_seconds, "test_acc": accuracy_on(model, test_loader, device)}


def lightning_run(model_name: str, data, train_idx, seed: int, epochs: int) -> dict | None:
    """The peer framework: PyTorch Lightning's Trainer over the textbook's own DataLoader and
    optimizer (the same model, Adam 1e-3, batch 64), CPU, no checkpoints, logger or progress
    bar (what it would add, it adds to both sides). None when lightning is not installed."""
    t0 = time.perf_counter()
    try:
        import lightning as L
    except ImportError:
        return None
    import_s = time.perf_counter() - t0
    torch.manual_seed(seed)
    mean, std = float(data.mean[0]), float(data.std[0])
    train_loader = DataLoader(TextbookDataset(data.train_x[train_idx], data.train_y[train_idx], mean, std),
                              batch_size=64, shuffle=True)
    test_loader = DataLoader(TextbookDataset(data.test_x, data.test_y, mean, std), batch_size=1000)
    net = models.build(model_name, data.input_shape, data.num_classes)
    epoch_seconds: list[float] = []

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def training_step(self, batch, _):
            images, labels = batch
            return nn.functional.cross_entropy(self.net(images), labels)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

        def on_train_epoch_start(self):
            self._t = time.perf_counter()

        def on_train_epoch_end(self):
            epoch_seconds.append(time.perf_counter() - self._t)

    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Module(), train_loader)
    return {"seed": seed, "epochs": epochs, "train_s": sum(epoch_seconds), "epoch_s": epoch_seconds,
            "import_s": import_s, "test_acc": accuracy_on(net, test_loader, "cpu")}


# ---------------------------------------------------------------- trainlab runs

def trainlab_run(model_name: str, data, seed: int, epochs: int, threads, runs_dir: str,
                 overrides: dict) -> dict:
    values = {"model": model_name, "seed": seed, "epochs": epochs, "quiet": True,
              "runs_dir": runs_dir, **RUN_SETTINGS.get(model_name, {"recipe": "fast"}), **overrides}
    if threads:
        values["threads"] = threads
    t0 = time.perf_counter()
    result = train(resolve(values), data=data, progress=False)
    wall = time.perf_counter() - t0
    hist = result.history
    last = hist[-1]
    return {"seed": seed, "epochs": epochs, "train_s": sum(r["train_seconds"] for r in hist),
            "epoch_s": [r["train_seconds"] for r in hist], "wall_s": wall,
            "val_acc": last.get("val_acc"), "test_acc": last.get("test_acc", result.test_accuracy),
            "final_test_acc": result.test_accuracy, "precision": result.results["precision"],
            "settings": {k: v for k, v in values.items() if k not in ("runs_dir", "quiet")}}


def estimate_epoch_seconds(model_name: str, data, threads, runs_dir: str, overrides: dict,
                           probe_steps: int = 20) -> float:
    """Seconds per full epoch, from a 1-epoch run on `probe_steps` batches of the data (used
    only to size --resnet-budget's fixed schedule before it starts; never looks at accuracy)."""
    from trainlab.recipes import get_recipe

    settings = {**RUN_SETTINGS.get(model_name, {"recipe": "fast"}), **overrides}
    bs = settings.get("batch_size") or get_recipe(settings.get("recipe", "fast")).batch_size
    val = settings.get("val_size", 5000)
    n = min(len(data.train_y), probe_steps * bs + val)
    sub = from_arrays(data.train_x[:n], data.train_y[:n], data.test_x[:1000], data.test_y[:1000],
                      classes=data.classes, mean=data.mean, std=data.std, name="probe")
    r = trainlab_run(model_name, sub, 0, 1, threads, runs_dir, overrides)
    return r["epoch_s"][0] * (len(data.train_y) - val) / max(1, n - val)


# ---------------------------------------------------------------- reporting

def mean_std(xs) -> tuple[float, float]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def pct(m_s) -> str:
    m, s = m_s
    return f"{100 * m:.2f} ± {100 * s:.2f}%"


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except (OSError, AttributeError):
        return "n/a"


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "trainlab": trainlab.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_start": load_average()}


def synthetic_data(n_train=1200, n_test=300, seed=0):
    """Tiny learnable images for --quick: each class a bright square on noise."""
    g = np.random.default_rng(seed)

    def make(n):
        labels = g.permutation(np.arange(n) % 10)
        images = g.integers(0, 60, size=(n, 1, 28, 28), dtype=np.uint8)
        for c in range(10):
            r, q = divmod(c, 4)
            images[labels == c, :, r * 7:(r + 1) * 7, q * 7:(q + 1) * 7] = 230
        return images, labels.astype(np.uint8)

    (tx, ty), (sx, sy) = make(n_train), make(n_test)
    return from_arrays(tx, ty, sx, sy, name="synthetic", classes=[str(i) for i in range(10)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--models", default=None,
                   help="comma-separated (default: mlp,mlp-reg,cnn,cnn-fast; add resnet with a budget)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per trainlab schedule (default 3)")
    p.add_argument("--textbook-seeds", type=int, default=1,
                   help="seeds of the textbook reference per model (default 1: the cnn's takes ~5 min)")
    p.add_argument("--textbook-epochs", type=int, default=10)
    p.add_argument("--no-textbook", action="store_true", help="skip the textbook reference")
    p.add_argument("--lightning", action="store_true",
                   help="also the peer framework: Lightning's Trainer over the textbook's DataLoader and "
                        "optimizer (its import time and epoch time), when lightning is installed")
    p.add_argument("--epochs-list", help="comma-separated fixed schedules for every model "
                   "(default: per model, see EPOCHS in this file)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    p.add_argument("--resnet-budget", type=float, default=600.0,
                   help="seconds of training for resnet's one fixed schedule, sized beforehand "
                        "from a short timing probe (default 600)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override a config key for every trainlab run, e.g. --set compile=true")
    p.add_argument("--malloc-tuning", choices=("on", "off"), default="on",
                   help="raise glibc's malloc thresholds (trainlab.training.runtime) after the textbook runs, "
                        "before trainlab's (default on: measured 1.4-1.9x on cnn steps)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: tiny synthetic data, 1 seed, 1-2 epochs (default models mlp, cnn-fast)")
    p.add_argument("--data-dir", default=os.environ.get("TRAINLAB_DATA") or str(DEFAULT_DATA))
    p.add_argument("--json", dest="json_out", help="write every run's numbers to this file")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key.replace("-", "_")] = json.loads(value)
    default_models = "mlp,cnn-fast" if args.quick else "mlp,mlp-reg,cnn,cnn-fast"
    names = [m.strip() for m in (args.models or default_models).split(",") if m.strip()]
    if args.quick:
        data = synthetic_data()
        args.seeds, args.textbook_seeds, args.textbook_epochs = 1, 1, 1
        epochs_for = {n: [1, 2] for n in names}
        overrides.setdefault("val_size", 200)
    else:
        data = load_dataset("fashion-mnist", args.data_dir)
        default = [int(e) for e in args.epochs_list.split(",")] if args.epochs_list else None
        epochs_for = {n: default or EPOCHS.get(n, [10]) for n in names}
    for n in names:
        if n not in models.available():
            p.error(f"unknown model {n!r}: choose from {', '.join(models.available())}")

    info = machine()
    seeds = list(range(args.seeds))
    print(f"# time to accuracy: {data.name}, {len(data.train_y)} training images "
          f"({overrides.get('val_size', 5000)} held out for validation), {len(data.test_y)} test")
    print(f"machine: CPU {info['cpu']} | {info['cores']} cores | {info['threads']} torch threads | "
          f"torch {info['torch']} | Python {info['python']} | load average {info['load_average_start']}")
    print(f"seeds: trainlab {seeds}, textbook {list(range(args.textbook_seeds))}"
          + (f" | overrides {overrides}" if overrides else ""), flush=True)
    report = {"machine": info, "seeds": seeds, "overrides": overrides, "textbook": {}, "trainlab": {}}

    # 1. the textbook references, first (before any malloc tuning)
    val_size = overrides.get("val_size", 5000)
    train_idx, _ = stratified_split(data.train_y, val_size, 0)
    refs = sorted({TEXTBOOK_OF.get(n, "cnn") for n in names}, key=list(TEXTBOOK_OF).index)
    if not args.no_textbook:
        print("\n## textbook reference (Dataset + DataLoader, bs 64, Adam 1e-3, per-batch .to())")
        print("| model | epochs | s/epoch | total training s | test acc | load avg |")
        print("|---|---:|---:|---:|---:|---|")
        for ref in refs:
            runs = [textbook_run(ref, data, train_idx, s, args.textbook_epochs)
                    for s in range(args.textbook_seeds)]
            t = mean_std([r["train_s"] for r in runs])
            acc = mean_std([r["test_acc"] for r in runs])
            report["textbook"][ref] = {"runs": runs, "train_s": t, "test_acc": acc,
                                       "load_average": load_average()}
            print(f"| {ref} | {args.textbook_epochs} | {t[0] / args.textbook_epochs:.2f} | {t[0]:.1f} | "
                  f"{pct(acc)} | {load_average()} |", flush=True)
    if args.lightning:  # the peer framework, on the textbook's DataLoader, also before malloc tuning
        print("\n## peer: Lightning Trainer over the textbook DataLoader (bs 64, Adam 1e-3)")
        print("| model | epochs | import s | s/epoch | total training s | test acc | load avg |")
        print("|---|---:|---:|---:|---:|---:|---|")
        report["lightning"] = {}
        for ref in refs:
            runs = [lightning_run(ref, data, train_idx, s, args.textbook_epochs) for s in range(args.textbook_seeds)]
            if runs[0] is None:
                print("| (lightning is not installed: pip install trainlab[lightning]) |")
                break
            t = mean_std([r["train_s"] for r in runs])
            acc = mean_std([r["test_acc"] for r in runs])
            report["lightning"][ref] = {"runs": runs, "train_s": t, "test_acc": acc}
            print(f"| {ref} | {args.textbook_epochs} | {runs[0]['import_s']:.2f} | {t[0] / args.textbook_epochs:.2f} | "
                  f"{t[0]:.1f} | {pct(acc)} | {load_average()} |", flush=True)

    # 2. trainlab's recipes, with trainlab's process settings
    if args.malloc_tuning == "on":
        from trainlab.training.runtime import apply_cpu_tuning

        tuning = apply_cpu_tuning()
        report["malloc_tuning"] = tuning
        print(f"\nmalloc tuning: {tuning['settings'] or 'not applied'} ({tuning['reason']})")
    with tempfile.TemporaryDirectory(prefix="ttacc-") as runs_dir:
        for name in names:
            epochs_list = epochs_for[name]
            if name == "resnet" and not args.epochs_list and not args.quick:
                est = estimate_epoch_seconds(name, data, args.threads, runs_dir, overrides)
                epochs_list = [max(1, int(args.resnet_budget / est))]
                print(f"\nresnet: {est:.0f} s/epoch estimated: {epochs_list[0]} epoch(s) fit the "
                      f"{args.resnet_budget:.0f} s budget")
            settings = {**RUN_SETTINGS.get(name, {"recipe": "fast"}), **overrides}
            print(f"\n## trainlab {name}: {settings}")
            print("| epochs | training s | s/epoch | wall s | val acc | test acc (final epoch) "
                  "| speed-up | precision | load avg |")
            print("|---:|---:|---:|---:|---:|---:|---:|---|---|")
            ref = report["textbook"].get(TEXTBOOK_OF.get(name, "cnn"))
            rows = []
            for epochs in epochs_list:
                runs = [trainlab_run(name, data, s, epochs, args.threads, runs_dir, overrides)
                        for s in seeds]
                t = mean_std([r["train_s"] for r in runs])
                row = {"epochs": epochs, "runs": runs, "train_s": t,
                       "wall_s": mean_std([r["wall_s"] for r in runs]),
                       "val_acc": mean_std([r["val_acc"] for r in runs]),
                       "test_acc": mean_std([r["test_acc"] for r in runs]),
                       "speedup": ref["train_s"][0] / t[0] if ref else None,
                       "load_average": load_average()}
                rows.append(row)
                print(f"| {epochs} | {t[0]:.2f} ± {t[1]:.2f} | {t[0] / epochs:.2f} | {row['wall_s'][0]:.1f} | "
                      f"{pct(row['val_acc'])} | {pct(row['test_acc'])} | "
                      f"{'%.1fx' % row['speedup'] if ref else '-'} | {runs[0]['precision']} | "
                      f"{row['load_average']} |", flush=True)
            targets = list(TARGETS.get(name, []))
            if ref:
                targets.append(round(100 * ref["test_acc"][0], 2))
            hits = {}
            for x in sorted(set(targets)):
                hit = next((r for r in sorted(rows, key=lambda r: r["epochs"])
                            if 100 * r["test_acc"][0] >= x), None)
                hits[x] = None if hit is None else {"epochs": hit["epochs"], "train_s": hit["train_s"][0]}
                where = ("not reached by any schedule in the list" if hit is None else
                         f"{hit['train_s'][0]:.2f} s ({hit['epochs']} epochs, mean test "
                         f"{100 * hit['test_acc'][0]:.2f}%)"
                         + (f", {ref['train_s'][0] / hit['train_s'][0]:.1f}x faster than the textbook's "
                            f"{ref['train_s'][0]:.0f} s" if ref else ""))
                print(f"time to {x:.2f}%: {where}")
            report["trainlab"][name] = {"settings": settings, "rows": rows, "time_to": hits}

    report["machine"]["load_average_end"] = load_average()
    print(f"\nload average at the end: {report['machine']['load_average_end']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
