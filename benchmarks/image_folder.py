"""Image folders: decode once into the cache vs the textbook per-sample PIL pipeline.

The 70,000 Fashion-MNIST images are written once as grey PNG files in a temporary folder
(`train/<label>/NNNNN.png`, `test/<label>/NNNNN.png`), then, in one run:

  decode       images/s of trainlab.data.folder's decoder with 1 and 2 processes (headers +
               pixels into the uint8 .npy), --repeat times each, median
  first start  `load_dataset("folder:DIR")` with an empty cache (decode + write) + the
               session's loaders + model + one training step: time to the first step
  cached start the same with the cache there (stat every file, read the .npy memory-mapped)
  epochs       one epoch of cnn-fast (as trainlab trains it here: channels_last, the `auto`
               precision -- bf16 autocast on a CPU with fast bf16 --, AdamW, batch 256) on the
               60,000 training images, each way --epochs times, median:
                 resident   DeviceLoader over the decoded split held in memory
                 streamed   DeviceLoader forced to stream (memory_budget=1) from the
                            memory-mapped cache in 64 MiB chunks
                 textbook   a torch Dataset opening each file with PIL per sample (convert L,
                            to float, normalize) + DataLoader(shuffle, batch 256), 0 and 2 workers
               and each way's data alone (the batches iterated, no model): what the cache removes,
               and the model alone (the same batches made beforehand: the ceiling of any
               loader's ratio for that model); for cnn-fast and then the mlp (--models), whose
               smaller compute shows more of the data pipeline's share
  accuracy     trainlab.train of the mlp (fast preset, 5 epochs) from the IDX files and from the
               PNG folder, seeds 0 and 1: the same held-out images, read two ways

    flock /tmp/trainlab-bench.lock .venv/bin/python benchmarks/image_folder.py --threads 2
    (--parts accuracy: only the accuracy part)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from trainlab.data import DeviceLoader, load_dataset
from trainlab.data import folder as folder_mod
from trainlab.data.idx import read_idx
from trainlab.data.sources import split_file
from trainlab.models import build
from trainlab.models import info as model_info
from trainlab.store.runs import cpu_model

MEAN, STD = 0.2861, 0.3528


def write_pngs(idx_dir: Path, dest: Path) -> float:
    from PIL import Image

    t = time.perf_counter()
    for split, stem in (("train", "train"), ("test", "test")):
        images = read_idx(split_file(idx_dir, f"{stem}_images"))
        labels = read_idx(split_file(idx_dir, f"{stem}_labels"))
        for lab in range(10):
            (dest / split / str(lab)).mkdir(parents=True, exist_ok=True)
        for i, (img, lab) in enumerate(zip(images, labels)):
            Image.fromarray(np.ascontiguousarray(img), "L").save(dest / split / str(int(lab)) / f"{i:05d}.png")
    return time.perf_counter() - t


def time_decode(root: Path, workers: int, repeat: int, work: Path) -> list[float]:
    s = folder_mod.scan(root)
    out = []
    for r in range(repeat):
        dest = work / f"decode-{workers}-{r}"
        t = time.perf_counter()
        images, _ = folder_mod.decode_folder(s, None, workers, dest)
        out.append(len(images) / (time.perf_counter() - t))
        del images
        shutil.rmtree(dest)
    return out


def time_to_first_step(root: Path, threads: int) -> float:
    from trainlab.config import resolve
    from trainlab.training.session import Session

    t = time.perf_counter()
    cfg = resolve({"dataset": f"folder:{root}", "model": "cnn-fast", "epochs": 1, "quiet": True,
                   "threads": threads})
    s = Session(cfg, load_dataset(cfg.dataset, seed=cfg.seed), progress=False)
    x, y = next(iter(s.loaders["train"]))
    s.optimizer.zero_grad()
    with s.precision.autocast(s.device):
        loss = s.loss_fn(s.train_model(x), y)
    loss.backward()
    s.optimizer.step()
    return time.perf_counter() - t


class PILFolder(Dataset):
    """The textbook way: one file opened and decoded per sample."""

    def __init__(self, files, labels):
        self.files, self.labels = files, labels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as img:
            a = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        return (torch.from_numpy(a)[None] - MEAN) / STD, int(self.labels[i])


def epoch_time(loader, seed: int, precision, model_name: str = "cnn-fast") -> float:
    """One epoch as trainlab trains the model here: channels_last for a conv model, the `auto`
    precision."""
    torch.manual_seed(seed)
    model = build(model_name, (1, 28, 28), 10)
    if model_info(model_name).conv:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    cpu = torch.device("cpu")
    layout = torch.channels_last if model_info(model_name).conv else torch.contiguous_format

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        with precision.autocast(cpu):
            loss = loss_fn(model(x.contiguous(memory_format=layout)), y)
        loss.backward()
        opt.step()

    warm = iter(loader)
    for _ in range(3):  # warm-up: allocator, kernels, worker start
        step(*next(warm))
    del warm
    t = time.perf_counter()
    for x, y in loader:
        step(x, y)
    return time.perf_counter() - t


def data_time(loader) -> float:
    """One pass over the batches with no model: the data pipeline's own cost."""
    t = time.perf_counter()
    n = 0
    for _, y in loader:
        n += len(y)
    return time.perf_counter() - t


def accuracy_both_ways(idx_dir: Path, root: Path, work: Path, threads: int) -> None:
    """The same training from the IDX files and from the PNG folder. The folder's training rows
    are in class-folder order, not the IDX order, so the seeded validation carve and the batch
    order differ: the runs are alike, not identical; two seeds show the spread."""
    import trainlab

    for seed in (0, 1):
        accs = {}
        for how, spec in (("IDX", {"dataset": "fashion-mnist", "data_dir": str(idx_dir)}),
                          ("folder", {"dataset": f"folder:{root}"})):
            r = trainlab.train({**spec, "model": "mlp", "recipe": "fast", "epochs": 5, "seed": seed,
                                "threads": threads, "runs_dir": str(work / "runs"), "quiet": True})
            accs[how] = r.test_accuracy
        print(f"accuracy seed {seed}: mlp fast 5 epochs, held-out test: IDX {accs['IDX']:.2%}, "
              f"folder {accs['folder']:.2%}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="decode runs per process count")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per loader")
    ap.add_argument("--data", default=os.environ.get("TRAINLAB_DATA", str(ROOT.parent / "shared/data/fashion-mnist")))
    ap.add_argument("--parts", default="decode,start,epochs,accuracy")
    ap.add_argument("--models", default="cnn-fast,mlp", help="models timed in the epochs part")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    torch.set_num_threads(args.threads)
    import PIL

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, torch {torch.__version__}, Pillow {PIL.__version__}, "
          f"numpy {np.__version__}, {args.threads} torch threads")
    work = Path(tempfile.mkdtemp(prefix="trainlab-imgbench-"))
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    try:
        root = work / "fashion"
        print(f"wrote 70,000 PNG files in {write_pngs(Path(args.data), root):.1f} s "
              f"({sum(f.stat().st_size for f in root.rglob('*.png')) / 2**20:.1f} MiB)")
        for w in ((1, 2) if "decode" in parts else ()):
            rates = time_decode(root, w, args.repeat, work)
            print(f"decode {w} process{'es' if w > 1 else ''}: median {statistics.median(rates):,.0f} images/s "
                  f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})")
        if "start" in parts or "epochs" in parts:  # (epochs need the cache the first start writes)
            first_and_cached_start(root, args)
        if "epochs" in parts:
            epochs_each_way(root, args)
        if "accuracy" in parts:  # last: its runs fill the cache the first start must not find
            accuracy_both_ways(Path(args.data), root, work, args.threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def first_and_cached_start(root: Path, args) -> None:
    first = time_to_first_step(root, args.threads)
    cached = [time_to_first_step(root, args.threads) for _ in range(3)]
    print(f"time to the first training step: first run {first:.2f} s, cached run median "
          f"{statistics.median(cached):.2f} s (runs: {', '.join(f'{c:.2f}' for c in cached)})")


def epochs_each_way(root: Path, args) -> None:
    images, meta, _ = folder_mod.load_decoded(root)
    splits = np.asarray(meta["splits"])
    n_train = int((splits == "train").sum())
    assert (splits[:n_train] == "train").all()  # train rows come first: a view, no copy
    mapped = torch.from_numpy(np.load(Path(images.filename), mmap_mode="c")[:n_train])
    labels = torch.tensor(meta["labels"][:n_train])
    resident_x = mapped.clone()
    files = [str(root / f) for f in meta["files"][:n_train]]
    ways = {
        "resident": lambda: DeviceLoader(resident_x, labels, 256, mean=[MEAN], std=[STD], shuffle=True,
                                         seed=0, memory_budget=None),
        "streamed": lambda: DeviceLoader(mapped, labels, 256, mean=[MEAN], std=[STD], shuffle=True,
                                         seed=0, memory_budget=1),
        "textbook, 0 workers": lambda: DataLoader(PILFolder(files, meta["labels"]), batch_size=256,
                                                  shuffle=True, num_workers=0),
        "textbook, 2 workers": lambda: DataLoader(PILFolder(files, meta["labels"]), batch_size=256,
                                                  shuffle=True, num_workers=2, persistent_workers=False),
        # the ceiling: the same batches made beforehand, so an epoch is the model's compute only
        "model alone": lambda: list(ways["resident"]()),
    }
    from trainlab.training.precision import resolve_precision

    data_only = {}
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        precision = resolve_precision("auto", torch.device("cpu"), model_name)
        print(f"model {model_name}{', channels_last' if model_info(model_name).conv else ''}, precision "
              f"{precision.name} ({precision.reason}), AdamW, batch 256")
        results = {}
        for name, make in ways.items():
            loader = make()
            if name == "streamed":
                assert loader.streaming
            times = [epoch_time(loader, 0, precision, model_name) for _ in range(args.epochs)]
            results[name] = (statistics.median(times), min(times))
            if name not in data_only and name != "model alone":  # the same for every model
                data_only[name] = statistics.median(data_time(loader) for _ in range(args.epochs))
            alone = f"; data alone {data_only[name]:.2f} s" if name in data_only else ""
            print(f"epoch {model_name} {name}: median {results[name][0]:.2f} s, fastest {results[name][1]:.2f} s "
                  f"(runs: {', '.join(f'{t:.2f}' for t in times)}){alone}")
            del loader
        for i, what in ((0, "medians"), (1, "fastest runs")):  # the fastest: steadier on a shared machine
            best_textbook = min(results["textbook, 0 workers"][i], results["textbook, 2 workers"][i])
            print(f"ratios {model_name} ({what}): textbook best / resident = "
                  f"{best_textbook / results['resident'][i]:.2f}x (ceiling: textbook best / model alone = "
                  f"{best_textbook / results['model alone'][i]:.2f}x); "
                  f"streamed / resident = {results['streamed'][i] / results['resident'][i]:.2f}x")
    best_data = min(data_only["textbook, 0 workers"], data_only["textbook, 2 workers"])
    print(f"ratio (data alone, medians): textbook best / resident = {best_data / data_only['resident']:.1f}x; "
          f"streamed / resident = {data_only['streamed'] / data_only['resident']:.1f}x")


if __name__ == "__main__":
    main()
