"""`folder:DIR`: your own images, one folder per class, decoded once into a uint8 cache.

Layouts (class names are the sorted folder names, recorded with the run):
    DIR/<class>/*.png|jpg|jpeg|bmp|gif|webp          one pool: a test split is carved from it
    DIR/train/<class>/...  [DIR/val/<class>/...]  [DIR/test/<class>/...]

Files with other extensions and names starting with "." are ignored. A `val/` folder is the
run's validation split as given (its images ride in the training tensors, named by
`Dataset.val_rows`; `val_size` is not used); without it the run carves `val_size` from
train/. Without `test/`, a stratified test split (TEST_FRACTION of each class) is carved from
train/ with the config's seed, and the files that went to test are recorded in the data
source (meta.json).

Channels: every image is converted to one channel count, by default what most files have
(1 for grey modes L, 1, I, I;16, LA; 3 for colour modes RGB, RGBA, P, CMYK, ...); alpha is
dropped, 16-bit grey is scaled to 8 bits, a GIF gives its first frame, EXIF orientation is
not applied (pixels as stored). One log line says what was chosen and what was converted.

Size policy (one rule): with `image_size = N` (`--image-size N`) every image's shorter side
is resized to N (bilinear, antialiased) and the centre NxN is cropped. Without it, when all
files have one size nothing is resized; when they differ, the most common size WxH is used
and the other files are scaled to cover WxH and centre-cropped to it (logged).

Decoding happens once (trainlab.data.folder.cache): headers are read, then pixels decoded
with Pillow in parallel processes (trainlab.data.folder.decode) into a uint8 N,C,H,W `.npy`
under the user cache (`cache_root()/folder/<group>-<key>/`), written in a fresh temporary folder
and renamed into place whole, and read back memory-mapped. The key is the folder's resolved
path, the size policy, and each file's relative path, size, mtime, inode, device and ctime:
a touched, added, removed or rewritten file (even with size and mtime put back), a copy of
the folder elsewhere, or another policy, gives a new key; the pixels read back are checked
against the sha256 recorded when they were written. A file that cannot be
decoded (zero bytes, truncated, not an image, over Pillow's decompression-bomb limit) is
listed with its reason and loading stops (DataError) before any training; with `skip_bad`
(`--skip-bad`) such files are left out and counted. Every class needs a training and a test
image (carved or in test/), else loading stops with one sentence: a run without a class's
test images cannot be compared or reported. Class and file names must be UTF-8.

Larger than memory: when the decoded images exceed `memory_budget` (default: half the memory
available now), each split is written once as its own .npy beside the cache and mapped, not
read; the DeviceLoader then streams batches from it (same order, same numbers).

Only the PNG, JPEG, BMP, GIF and WebP decoders are ever tried (Pillow would otherwise pick
a plugin by content, and EPS runs Ghostscript). Pillow is optional (`pip install
trainlab[images]`): importing trainlab does not need it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from trainlab.data import formats
from trainlab.data.dataset import Dataset, from_arrays
from trainlab.data.folder.cache import CACHE_VERSION, cache_key, load_decoded  # noqa: F401
from trainlab.data.folder.csv_scan import parse_spec, scan_csv
from trainlab.data.folder.decode import (GREY_MODES, MAX_SIDE, SHOWN_BAD, _bad_sentence, _decode,  # noqa: F401
                                         _pillow, convert, decode_folder, fit_to, prepare)
from trainlab.data.folder.mapped_splits import _mapped_splits
from trainlab.data.folder.scanner import EXTENSIONS, MAX_FILES, SPLITS, Scan, scan  # noqa: F401
from trainlab.data.idx import payload_sha256
from trainlab.data.loader import default_memory_budget, derive_seed, stratified_split
from trainlab.errors import ConfigError, DataError
from trainlab.text import format_bytes, parse_bytes
from trainlab.text import printable

log = logging.getLogger("trainlab.data")

TEST_FRACTION = 0.2  # of each class, when the folder has no test/ split
_TEST_SALT = 0x7E57_0001  # the test carve draws from its own stream, not the val split's
# --image-size N crops every image to NxN: Pillow refuses a crop over 2x MAX_IMAGE_PIXELS
# (178,956,970) as a decompression bomb, which N = 13,378 reaches; 8192 leaves room for the
# resized image before the crop (8192 x 16384 for a 2:1 photo) and is already 200 MiB an image.
MAX_IMAGE_SIZE = 8192


def mean_std_from_sums(sums: np.ndarray, pixels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixel/255 over the images whose exact integer sums these
    are (N,C,2: sum, sum of squares): the same numbers whatever the order, no pass over pixels."""
    total = sums.sum(0, dtype=np.int64).astype(np.float64)  # exact below 2**53 / 255**2 pixels
    n = len(sums) * pixels
    mean = total[:, 0] / (n * 255.0)
    std = np.sqrt(np.clip(total[:, 1] / (n * 255.0 ** 2) - mean * mean, 0, None))
    if (std == 0).any():
        raise DataError("the training images are constant in some channel (std 0); check the data")
    return [round(float(m), 4) for m in mean], [round(float(v), 4) for v in std]



def read_folder(arg: str, data_dir=None, *, image_size: int | None = None, skip_bad: bool = False,
                seed: int = 0, memory_budget: str | None = None):
    """`folder:DIR` as a Dataset (see the module docstring)."""
    if image_size is not None and not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size = {image_size} is invalid: must be at least 1 and at most {MAX_IMAGE_SIZE} "
                          "(pixels a side)")
    root = Path(arg).expanduser()
    return _from_scan(root, f"folder:{root}", None, image_size, skip_bad, seed, memory_budget)


def read_csv(arg: str, data_dir=None, *, image_size: int | None = None, skip_bad: bool = False,
             seed: int = 0, memory_budget: str | None = None):
    """`csv:FILE[#path=COL,label=COL,split=COL]` as a Dataset (trainlab.data.folder.csv_scan)."""
    if image_size is not None and not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size = {image_size} is invalid: must be at least 1 and at most {MAX_IMAGE_SIZE} "
                          "(pixels a side)")
    s = scan_csv(arg)
    path, opts = parse_spec(arg)
    spec = f"csv:{path.resolve()}" + (f"#{arg.partition('#')[2]}" if opts else "")
    return _from_scan(s.root, f"csv:{path}", s, image_size, skip_bad, seed, memory_budget, spec)


def _from_scan(root: Path, name: str, scanned, image_size, skip_bad, seed, memory_budget, spec: str | None = None):
    """The Dataset of a scanned folder or CSV: decoded (cached), bad files, the test carve, val/."""
    import torch

    images, meta, _ = load_decoded(root, image_size, scanned=scanned)
    bad = [tuple(b) for b in meta["bad"]]
    if bad and not skip_bad:
        raise DataError(_bad_sentence(root, bad))
    if bad:
        log.warning("data: left out %d file%s that cannot be decoded (skip_bad): %s", len(bad),
                    "s" if len(bad) > 1 else "", "; ".join(f"{r} ({w})" for r, w in bad[:SHOWN_BAD]))
    labels = np.asarray(meta["labels"], dtype=np.int64)
    splits = np.asarray(meta["splits"])
    files = meta["files"]
    test_mask = splits == "test"
    carved = None
    if not test_mask.any():  # carved from train/ only: a val/ folder stays whole
        pool = np.nonzero(splits != "val")[0]
        n_test = round(len(pool) * TEST_FRACTION)
        if n_test < 1 or n_test >= len(pool):
            raise DataError(f"folder:{root}: {len(pool)} image{'s' if len(pool) != 1 else ''} are too few to "
                            f"carve a test split ({TEST_FRACTION:.0%}); add images or a test/ folder")
        _, test_idx = stratified_split(torch.from_numpy(labels[pool]), n_test, derive_seed(seed, _TEST_SALT))
        test_mask[pool[test_idx.numpy()]] = True
        _one_test_image_each(test_mask, pool, labels, len(meta["classes"]), seed)
        carved = {"fraction": TEST_FRACTION, "seed": seed, "files": [files[i] for i in np.nonzero(test_mask)[0]]}
    train_idx, test_idx = np.nonzero(~test_mask)[0], np.nonzero(test_mask)[0]
    _every_class_in_both(root, meta["classes"], labels, train_idx, test_idx, carved is not None)
    source = {"kind": name.partition(":")[0], "path": str(root.resolve()), "layout": meta["layout"],
              "detail": f"{meta['channels']}x{meta['height']}x{meta['width']}, {meta['policy']}",
              "channels": meta["channels"], "image_size": image_size,
              "height": meta["height"], "width": meta["width"], "resize": "shorter side, centre crop",
              "modes": meta["modes"], "sizes": meta["sizes"], "skipped_bad": len(bad),
              "bad": [list(b) for b in bad[:100]], "ignored": meta["ignored"]}
    if carved:
        source["test_carved"] = carved
    # val/ images ride in the training split; val_rows names them, and the run validates on
    # exactly those (val_size is not used)
    is_val = splits[train_idx] == "val"
    val_rows = np.nonzero(is_val)[0]
    given_val = torch.from_numpy(val_rows) if len(val_rows) else None
    if len(val_rows):
        source["val_given"] = int(len(val_rows))
        missing = sorted(set(meta["classes"]) - {meta["classes"][c] for c in set(labels[train_idx][val_rows].tolist())})
        if missing:
            log.warning("data: val/ has no images of %d class%s (%s): their validation accuracy is not measured",
                        len(missing), "es" if len(missing) > 1 else "", ", ".join(missing[:5]))
    fit_rows = train_idx[~is_val]  # statistics of what the model trains on
    mean, std = mean_std_from_sums(meta["sums"][fit_rows], meta["height"] * meta["width"])

    budget = parse_bytes(memory_budget) if memory_budget is not None else default_memory_budget(torch.device("cpu"))
    if budget is not None and images.nbytes > budget:  # larger than memory: splits stay mapped

        log.info("data: %s of images is over the memory budget (%s): the splits stay "
                 "memory-mapped and batches are streamed", format_bytes(images.nbytes), format_bytes(budget))
        split, hashes = _mapped_splits(Path(images.filename).parent, images, {"train": train_idx, "test": test_idx})
        ty, sy = labels[train_idx], labels[test_idx]
        source["mapped"] = True
        ds = Dataset(name=name, classes=list(meta["classes"]),
                     train_x=torch.from_numpy(split["train"]), train_y=torch.from_numpy(ty),
                     test_x=torch.from_numpy(split["test"]), test_y=torch.from_numpy(sy),
                     mean=mean, std=std, source=source,
                     hashes={"train_images": hashes["train"], "train_labels": payload_sha256(ty),
                             "test_images": hashes["test"], "test_labels": payload_sha256(sy)})
        ds.spec = spec or f"folder:{root.resolve()}"
        ds.val_rows = given_val
        return ds
    ds = from_arrays(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
                     classes=meta["classes"], name=name, source=source, mean=mean, std=std)
    ds.spec = spec or f"folder:{root.resolve()}"
    ds.val_rows = given_val
    return ds


def _one_test_image_each(test_mask: np.ndarray, pool: np.ndarray, labels: np.ndarray, n_classes: int,
                         seed: int) -> None:
    """A class the proportional carve gives no test image (4 images at 20%: 0.8) gets one, drawn
    seeded, when it has two or more: a run without a class's test accuracy cannot be compared
    or reported. Carves that already give every class one are unchanged."""
    rng = np.random.default_rng(derive_seed_np(seed))
    in_test = np.bincount(labels[test_mask], minlength=n_classes)
    for c in np.nonzero(in_test == 0)[0]:
        rows = pool[(labels[pool] == c) & ~test_mask[pool]]
        if len(rows) >= 2:
            test_mask[rows[rng.integers(len(rows))]] = True


def derive_seed_np(seed: int) -> int:
    return derive_seed(seed, _TEST_SALT + 1)


def _every_class_in_both(root: Path, classes: list[str], labels: np.ndarray, train_idx: np.ndarray,
                         test_idx: np.ndarray, carved: bool) -> None:
    """A class with no training image cannot be learnt, and one with no test image has no
    accuracy: `compare` and `report` refuse such a run, so it is refused here, before training."""

    n = len(classes)
    for idx, split in ((train_idx, "training"), (test_idx, "test")):
        missing = np.nonzero(np.bincount(labels[idx], minlength=n) == 0)[0]
        if not len(missing):
            continue
        names = ", ".join(printable(classes[i]) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        have = np.bincount(labels, minlength=n)
        if carved:
            raise DataError(f"folder:{root}: class{'es' if len(missing) > 1 else ''} {names} "
                            f"{'have' if len(missing) > 1 else 'has'} too few images to give both a training and "
                            f"a test image ({', '.join(str(int(have[i])) for i in missing[:5])}); give each class "
                            f"at least 2 images, or a test/ folder")
        where = "train/" if split == "training" else "test/"
        raise DataError(f"folder:{root}: {where} has no images of class{'es' if len(missing) > 1 else ''} {names} "
                        f"(every class needs {split} images, or its accuracy cannot be reported); "
                        f"add some or remove the class")


read_folder.options = ("image_size", "skip_bad", "seed", "memory_budget")
read_csv.options = read_folder.options
formats.register_format("csv", read_csv)
formats.register_format("folder", read_folder)


MAX_PREDICT_FILES = 100_000  # files named on one `trainlab predict` command line (folders expanded)


def image_files(inputs) -> list[Path]:
    """The image files named, folders expanded (recursively, sorted; other files ignored)."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in EXTENSIONS
                            and not any(part.startswith(".") for part in q.relative_to(p).parts))
        elif p.is_file():
            found.append(p)
        elif os.path.lexists(p):  # a FIFO, a device, a dangling or looping link: never opened
            raise DataError(f"{item}: not a regular file or a folder; name image files or folders of them")
        else:
            raise DataError(f"{item}: no such file or folder; name image files or folders of them")
        if len(found) > MAX_PREDICT_FILES:
            raise DataError(f"over {MAX_PREDICT_FILES:,} image files named: predict them in parts")
    if not found:
        raise DataError(f"no image files ({', '.join(EXTENSIONS)}) in {', '.join(map(str, inputs))}")
    return found


def read_images(paths: list[Path], channels: int, width: int, height: int):
    """Image files as a uint8 N,C,H,W tensor, with the training's channel and size policy."""
    import torch

    _pillow()
    if channels not in (1, 3):
        raise DataError(f"the model takes {channels}-channel images; image files give 1 (grey) or 3 (colour)")
    pixels, bad = _decode([str(p) for p in paths], channels, width, height)
    if bad:
        raise DataError(_bad_sentence(Path("."), [(str(paths[i]), why) for i, why in bad])
                        .replace("folder:.: ", "").split("; fix")[0] + "; fix or leave out those files")
    return torch.from_numpy(pixels)
