"""Shared test fixtures. Tests never touch the network or the user's home, run one torch
thread per process, and write only into their own temporary folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist"

# Reasons a test may be skipped even in CI (listed in the README); any other skip fails CI.
ALLOWED_SKIPS = ("needs a CUDA GPU", "needs Apple MPS", "needs several CUDA GPUs")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """HOME and XDG_CACHE_HOME in a temp folder; no TRAINLAB_DATA unless a test asks."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.delenv("TRAINLAB_DATA", raising=False)
    return home


@pytest.fixture
def real_data_dir(monkeypatch) -> Path:
    """The real Fashion-MNIST files from ../shared, exported as TRAINLAB_DATA."""
    path = Path(os.environ.get("TRAINLAB_TEST_DATA", REAL_DATA))
    if not (path / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"the real data is missing at {path}: tests expect ../shared/data/fashion-mnist "
                    "beside the project (or TRAINLAB_TEST_DATA)")
    monkeypatch.setenv("TRAINLAB_DATA", str(path))
    return path


def make_images(n: int, num_classes: int = 10, size: int = 28, channels: int = 1, seed: int = 0):
    """Tiny learnable data: each class a distinct bright square, plus noise. uint8 NCHW."""
    g = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    g.shuffle(labels)
    images = g.integers(0, 60, size=(n, channels, size, size), dtype=np.uint8)
    cell = max(1, size // 4)
    for c in range(num_classes):
        r, q = divmod(c % 16, 4)
        images[labels == c, :, r * cell:(r + 1) * cell, q * cell:(q + 1) * cell] = 230
    return images, labels.astype(np.uint8)


def write_idx_folder(folder: Path, n_train: int = 600, n_test: int = 200, seed: int = 1,
                     gz: bool = True) -> Path:
    """Tiny synthetic data as the four standard IDX files, so `idx:DIR` runs (and other
    processes) can read it."""
    from trainlab.data.idx import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    tx, ty = make_images(n_train, seed=seed)
    sx, sy = make_images(n_test, seed=seed + 1)
    ext = ".gz" if gz else ""
    for name, arr in (("train-images-idx3-ubyte", tx[:, 0]), ("train-labels-idx1-ubyte", ty),
                      ("t10k-images-idx3-ubyte", sx[:, 0]), ("t10k-labels-idx1-ubyte", sy)):
        write_idx(folder / (name + ext), arr)
    return folder


@pytest.fixture
def tiny_data():
    """A small trainlab Dataset (600 train / 200 test, 10 classes, 1x28x28)."""
    from trainlab.data import from_arrays

    tx, ty = make_images(600, seed=1)
    sx, sy = make_images(200, seed=2)
    return from_arrays(tx, ty, sx, sy, name="tiny", classes=[f"c{i}" for i in range(10)])



@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With CI=true a skip fails the run unless its reason is one the README lists."""
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("CI") == "true" and rep.skipped and call.when in ("setup", "call"):
        reason = str(rep.longrepr[-1]) if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        if not any(a in reason for a in ALLOWED_SKIPS):
            rep.outcome = "failed"
            rep.longrepr = f"skipped in CI for a reason the README does not allow: {reason}"
