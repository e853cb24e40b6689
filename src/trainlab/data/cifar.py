"""`cifar10:DIR` and `cifar100:DIR`: the binary version of CIFAR (never the pickled one).

CIFAR-10 binary: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`, each a run of
3073-byte records (1 label byte, then 1024 red, 1024 green, 1024 blue bytes: a 32x32 image
row by row); class names from `batches.meta.txt` when present. CIFAR-100 binary: `train.bin`
and `test.bin`, 3074-byte records (coarse label, fine label, 3072 pixel bytes); the fine
labels are used, named by `fine_label_names.txt` when present. DIR may also be the folder
above the unpacked `cifar-10-batches-bin/` or `cifar-100-binary/`.

Every file must hold a whole number of records (at least one) and labels in range, checked
from its size before anything is read. The "python version" (data_batch_1, test_batch,
train, test as pickles) is refused: unpickling a data file can run code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from trainlab.data import formats
from trainlab.data.dataset import from_arrays
from trainlab.errors import DataError

log = logging.getLogger("trainlab.data")

PIXELS = 3 * 32 * 32
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
LAYOUTS = {
    "cifar10": {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"],
                "labels": 1, "classes": 10, "names": "batches.meta.txt", "sub": "cifar-10-batches-bin",
                "pickled": ("data_batch_1", "test_batch", "batches.meta"), "py_sub": "cifar-10-batches-py",
                "archive": "cifar-10-binary.tar.gz"},
    "cifar100": {"train": ["train.bin"], "test": ["test.bin"], "labels": 2, "classes": 100,
                 "names": "fine_label_names.txt", "sub": "cifar-100-binary",
                 "pickled": ("train", "test", "meta"), "py_sub": "cifar-100-python",
                 "archive": "cifar-100-binary.tar.gz"},
}
MAX_NAMES = 1 << 16  # bytes of a class-name file


def _folder(kind: str, arg: str) -> Path:
    lay = LAYOUTS[kind]
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataError(f"{kind}:{arg}: {root} is not a folder; {kind}:DIR needs the folder of the "
                        f"binary version ({lay['archive']}, unpacked)")
    for candidate in (root, root / lay["sub"]):
        if all((candidate / f).is_file() for f in lay["train"] + lay["test"]):
            return candidate
    for candidate in (root, root / lay["py_sub"]):
        if any((candidate / f).is_file() for f in lay["pickled"]):
            raise DataError(f"{kind}:{arg}: {candidate} holds the pickled Python version of {kind.upper()}, "
                            "which trainlab never reads (unpickling a file can run code); download the "
                            f"binary version ({lay['archive']}) and point {kind}:DIR at it")
    missing = [f for f in lay["train"] + lay["test"] if not (root / f).is_file()]
    raise DataError(f"{kind}:{arg}: {root} lacks {', '.join(missing)}; {kind}:DIR needs the binary "
                    f"version ({lay['archive']}, unpacked)")


def _read_records(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    lay = LAYOUTS[kind]
    record = lay["labels"] + PIXELS
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    if size == 0 or size % record:
        raise DataError(f"{path}: {size:,} bytes is not a whole number of {record}-byte {kind.upper()} "
                        f"records ({size // record:,} records and {size % record} bytes over); the file "
                        "is truncated or not the binary version: download it again")
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    if raw.size != size:
        raise DataError(f"{path}: read {raw.size:,} of its {size:,} bytes; it changed while being read")
    rows = raw.reshape(-1, record)
    labels = rows[:, lay["labels"] - 1].astype(np.int64)  # cifar100: the fine label
    if labels.max() >= lay["classes"]:
        raise DataError(f"{path}: label {int(labels.max())} is out of range for {lay['classes']} classes "
                        f"(record {int(labels.argmax())}); the file is damaged or not {kind.upper()}")
    return rows[:, lay["labels"]:].reshape(-1, 3, 32, 32), labels


def _class_names(folder: Path, kind: str) -> list[str]:
    lay = LAYOUTS[kind]
    path = folder / lay["names"]
    default = list(CIFAR10_CLASSES) if kind == "cifar10" else [str(i) for i in range(lay["classes"])]
    if not path.is_file():
        return default
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_NAMES + 1)
        names = [n.strip() for n in raw.decode("utf-8").splitlines() if n.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the class names ({getattr(e, 'strerror', None) or e}); "
                        "it should be UTF-8 text, one name per line") from None
    if len(raw) > MAX_NAMES or len(names) != lay["classes"]:
        raise DataError(f"{path}: holds {len(names)} names but {kind.upper()} has {lay['classes']} classes; "
                        "fix or remove the file")
    return names


def read_cifar(kind: str, arg: str):
    lay = LAYOUTS[kind]
    folder = _folder(kind, arg)
    parts = {split: [_read_records(folder / f, kind) for f in lay[split]] for split in ("train", "test")}
    tx = np.concatenate([p[0] for p in parts["train"]])
    ty = np.concatenate([p[1] for p in parts["train"]])
    sx = np.concatenate([p[0] for p in parts["test"]])
    sy = np.concatenate([p[1] for p in parts["test"]])
    log.info("data: reading %s binary files from %s (%d train / %d test)", kind, folder, len(ty), len(sy))
    ds = from_arrays(tx, ty, sx, sy, classes=_class_names(folder, kind), name=kind,
                     source={"kind": "folder", "path": str(folder.resolve()), "detail": f"{kind} binary version"})
    ds.spec = f"{kind}:{os.path.abspath(folder)}"
    return ds


formats.register_format("cifar10", lambda arg, data_dir=None: read_cifar("cifar10", arg))
formats.register_format("cifar100", lambda arg, data_dir=None: read_cifar("cifar100", arg))
