"""The textbook Fashion-MNIST MLP, as one script: the reference for `whole_process.py`.

What a tutorial writes, start to end in one process: read the four gzipped IDX files (as
torchvision's FashionMNIST does: gzip, then the bytes after the header as uint8), a Dataset
that normalizes one image per __getitem__ (ToTensor + Normalize), DataLoader(batch_size=64,
shuffle=True), the same 784-256-128-10 MLP as trainlab's `mlp`, Adam 1e-3, 10 epochs on all
60,000 training images, `.to(device)` per batch, then the test accuracy, written as JSON to
`--out`. It imports nothing from trainlab, so its process pays only for what it does.

    python benchmarks/textbook_mlp.py --data-dir ../shared/data/fashion-mnist --out result.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


class FashionMNIST(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, mean=0.2860, std=0.3530):
        self.images, self.labels = torch.from_numpy(images.copy()), labels.tolist()
        self.mean, self.std = mean, std

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return (self.images[i].float() / 255 - self.mean) / self.std, self.labels[i]


def train_epochs(model, train_loader, optimizer, epochs: int, device) -> list[float]:
    """The tutorial's loop (also time_to_accuracy.py's textbook reference): seconds per epoch."""
    criterion = nn.CrossEntropyLoss()
    epoch_seconds = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - t0)
    return epoch_seconds


def accuracy_on(model, test_loader, device) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in test_loader:
            correct += (model(images.to(device)).argmax(1) == labels.to(device)).sum().item()
    return correct / len(test_loader.dataset)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    d = args.data_dir
    train = FashionMNIST(read_idx(d / "train-images-idx3-ubyte.gz"), read_idx(d / "train-labels-idx1-ubyte.gz"))
    test = FashionMNIST(read_idx(d / "t10k-images-idx3-ubyte.gz"), read_idx(d / "t10k-labels-idx1-ubyte.gz"))
    train_loader = DataLoader(train, batch_size=64, shuffle=True)
    test_loader = DataLoader(test, batch_size=1000)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                          nn.Linear(128, 10)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_seconds = sum(train_epochs(model, train_loader, optimizer, args.epochs, device))
    args.out.write_text(json.dumps({"test_acc": accuracy_on(model, test_loader, device),
                                    "train_seconds": train_seconds, "in_process_seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
