"""A folder of the four IDX split files read into a Dataset: the catalog's data sets (once
trainlab.data.sources has found them) and `idx:DIR`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from trainlab.catalog import SPLIT_FILES, DatasetInfo
from trainlab.data.dataset import Dataset, from_arrays
from trainlab.data.idx import read_idx
from trainlab.data.sources import Source, check_recorded_hashes, locate, missing_files, split_file
from trainlab.errors import DataError

log = logging.getLogger("trainlab.data")


def _to_nchw(images: np.ndarray, name: str) -> np.ndarray:
    if images.ndim == 3:  # N,H,W grayscale (the IDX convention)
        return images[:, None]
    if images.ndim == 4:  # N,H,W,C (IDX stores channels last)
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise DataError(f"{name}: images must have 3 (N,H,W) or 4 (N,H,W,C) dimensions, got shape {images.shape}")


MAX_CLASSES_FILE = 1 << 20  # bytes of classes.txt: plenty for names, bounded for memory


def _read_classes(folder: Path) -> list[str] | None:
    path = folder / "classes.txt"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CLASSES_FILE + 1)
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(raw) > MAX_CLASSES_FILE:
        raise DataError(f"{path}: larger than {MAX_CLASSES_FILE >> 20} MiB, too large for class names; "
                        "it should hold one class name per line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        "save it as UTF-8, one class name per line") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return names or None


def read_idx_folder(folder: Path, name: str, classes=None, mean=None, std=None,
                    source: Source | None = None) -> Dataset:
    """Read the four split files of `folder` into a Dataset, checking they fit together."""
    missing = missing_files(folder)
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}")
    arrays = {}
    for split in SPLIT_FILES:
        arrays[split] = read_idx(split_file(folder, split))
    for split in ("train_images", "test_images"):
        arrays[split] = _to_nchw(arrays[split], str(split_file(folder, split)))
    classes = classes or _read_classes(folder)
    if classes is not None:
        for split in ("train_labels", "test_labels"):
            lab = arrays[split]
            if len(lab) and lab.max() >= len(classes):
                raise DataError(f"{split_file(folder, split)}: label {lab.max()} is out of range "
                                f"for the {len(classes)} class names given")
    ds = from_arrays(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                     arrays["test_labels"], classes=classes, name=name, mean=mean, std=std,
                     source=(source.to_dict() if source else {"kind": "folder", "path": str(folder)}))
    check_recorded_hashes(folder, ds.hashes)  # a cached copy altered since it was fetched
    return ds


def read_catalog(info: DatasetInfo, data_dir: str | os.PathLike | None = None) -> Dataset:
    """A catalog data set, found (cache, mirror, npm: trainlab.data.sources) and read."""
    source = locate(info, data_dir)
    ds = read_idx_folder(source.path, info.name, classes=list(info.classes),
                         mean=info.mean, std=info.std, source=source)
    ds.spec = info.name
    return ds


def read_idx_dir(arg: str, data_dir=None) -> Dataset:
    """`idx:DIR`: a folder holding the four IDX files (the name is kept as given, the spec absolute)."""
    folder = Path(arg).expanduser()
    if not folder.is_dir():
        raise DataError(f"idx:{arg}: {folder} is not a folder; idx:DIR needs a folder holding the four IDX files")
    log.info("data: reading IDX folder %s", folder)
    ds = read_idx_folder(folder, name=f"idx:{folder}", source=Source("folder", folder))
    ds.spec = f"idx:{os.path.abspath(folder)}"
    return ds
