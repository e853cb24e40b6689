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

Decoding happens once: headers are read, then pixels decoded with Pillow in parallel
processes (chunks of files; one process for small folders) into a uint8 N,C,H,W `.npy`
under the user cache (`cache_root()/folder/<key>/`), written in a fresh temporary folder
and renamed into place whole, and read back memory-mapped. The key is a sha256 of the
sorted relative paths, sizes and mtimes, the size policy and the channel request: touching,
adding or removing a file, or changing the policy, gives a new key. A file that cannot be
decoded (zero bytes, truncated, not an image, over Pillow's decompression-bomb limit) is
listed with its reason and loading stops (DataError) before any training; with `skip_bad`
(`--skip-bad`) such files are left out and counted.

Larger than memory: when the decoded images exceed `memory_budget` (default: half the memory
available now), each split is written once as its own .npy beside the cache and mapped, not
read; the DeviceLoader then streams batches from it (same order, same numbers).

Only the PNG, JPEG, BMP, GIF and WebP decoders are ever tried (Pillow would otherwise pick
a plugin by content, and EPS runs Ghostscript). Pillow is optional (`pip install
trainlab[images]`): importing trainlab does not need it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import multiprocessing
import os
import secrets
import shutil
import stat
import sys
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainlab.data import formats
from trainlab.data.sources import cache_root
from trainlab.errors import ConfigError, DataError

log = logging.getLogger("trainlab.data")

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLITS = ("train", "val", "test")
TEST_FRACTION = 0.2  # of each class, when the folder has no test/ split
_TEST_SALT = 0x7E57_0001  # the test carve draws from its own stream, not the val split's
CACHE_VERSION = 2
MAX_FILES = 10_000_000  # a bound on the scan: more is a wrong folder, not a data set
MAX_SIDE = 16384  # the chosen size (the most common one) is at most this many pixels a side
# --image-size N crops every image to NxN: Pillow refuses a crop over 2x MAX_IMAGE_PIXELS
# (178,956,970) as a decompression bomb, which N = 13,378 reaches; 8192 leaves room for the
# resized image before the crop (8192 x 16384 for a 2:1 photo) and is already 200 MiB an image.
MAX_IMAGE_SIZE = 8192
SMALL = 256  # files decoded in this process, without a pool
_MAX_META = 1 << 28  # bytes of a cache's meta.json
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "La"}
SHOWN_BAD = 5  # bad files listed by name in the error; the rest are counted


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading image folders needs Pillow: pip install trainlab[images]") from None
    return Image


@dataclass
class Scan:
    """The image files in scan order, one column per field: a scan making one small object per
    file measured 1.32x slower for 70,000 files (benchmarks/RESULTS.md), most of it the
    garbage collector's passes over them."""
    root: Path
    layout: str  # "classes" (DIR/<class>/) or "splits" (DIR/train/<class>/...)
    classes: list[str]
    rels: list[str] = field(default_factory=list)  # paths relative to DIR, "/" separators
    splits: list[str] = field(default_factory=list)  # train, val or test (as found on disk)
    labels: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes_ns: list[int] = field(default_factory=list)
    ignored: int = 0  # entries skipped: another extension, a leading ".", not a regular file


def _class_dirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DataError(f"{folder}: cannot list it ({e.strerror or e})") from None


def scan(root: str | os.PathLike) -> Scan:
    """The folder's layout, classes and image files (path, size, mtime): stat only, no decoding."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"folder:{root}: {root} is not a folder; folder:DIR needs DIR/<class>/*.png "
                        "(or DIR/train/<class>/...) image files")
    top = _class_dirs(root)
    if "train" in top and _class_dirs(root / "train"):
        extra = [d for d in top if d not in SPLITS]
        if extra:
            raise DataError(f"folder:{root}: it has train/ and also {', '.join(extra[:3])}/: in the split "
                            "layout only train/, val/ and test/ are read; move the other folders away")
        layout, split_dirs = "splits", [s for s in SPLITS if s in top]
        classes = _class_dirs(root / "train")
    else:
        layout, split_dirs, classes = "classes", [""], top
    if not classes:
        raise DataError(f"folder:{root}: no class folders found; put the images in DIR/<class>/ "
                        "(one folder per class) or DIR/train/<class>/")
    out = Scan(root, layout, classes)
    index = {c: i for i, c in enumerate(classes)}
    jobs = []  # (folder, prefix, label, split): one per class folder of each split
    for split in split_dirs:
        base = root / split if split else root
        for name in _class_dirs(base):
            if name not in index:
                raise DataError(f"folder:{root}: {split}/{name}/ is a class that train/ does not have; "
                                f"every class of {split}/ needs a folder in train/ too")
            jobs.append((base / name, f"{split}/{name}/" if split else f"{name}/", index[name], split or "train"))
    # Listing and stat-ing is most of a cached start (70,000 files: ~0.3 s). One thread: a
    # pool of 4 threads measured 2x slower here (the per-file Python work holds the GIL).
    total = [0]
    for job in jobs:
        out.ignored += _list_class(root, *job, total, out)
    train_labels = {lab for lab, sp in zip(out.labels, out.splits) if sp != "test"}
    empty = [c for i, c in enumerate(classes) if i not in train_labels]
    if empty:
        raise DataError(f"folder:{root}: class folder{'s' if len(empty) > 1 else ''} "
                        f"{', '.join(empty[:5])} hold{'' if len(empty) > 1 else 's'} no training images "
                        f"({', '.join(EXTENSIONS)}); add images or remove the folder")
    return out


def _list_class(root: Path, folder: Path, prefix: str, label: int, kind: str, total: list[int], out: Scan) -> int:
    """Append one class folder's image files (sorted by name) to `out`; the count of other files."""
    try:
        listing = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{folder}: cannot list it ({e.strerror or e})") from None
    total[0] += len(listing)
    if total[0] > MAX_FILES:
        raise DataError(f"folder:{root}: over {MAX_FILES:,} files; is this the right folder?")
    rels, sizes, mtimes = out.rels, out.sizes, out.mtimes_ns
    first, is_file = len(rels), stat.S_ISREG
    for e in listing:
        file = e.name
        if file[0] == "." or not file.lower().endswith(EXTENSIONS):
            continue
        try:
            st = e.stat()
        except OSError as err:  # e.g. a dangling or looping link
            raise DataError(f"{e.path}: cannot read it ({err.strerror or err}); remove it or move it "
                            "out of the folder") from None
        if is_file(st.st_mode):
            rels.append(prefix + file)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
    found = len(rels) - first
    out.labels += [label] * found
    out.splits += [kind] * found
    return len(listing) - found


def cache_key(s: Scan, image_size: int | None, channels: int | None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "layout": s.layout, "classes": s.classes,
                         "image_size": image_size, "channels": channels}, sort_keys=True).encode())
    h.update("".join(f"\0{r}\0{n}\0{m}" for r, n, m in zip(s.rels, s.sizes, s.mtimes_ns))
             .encode("utf-8", "surrogateescape"))
    return h.hexdigest()


# ---------------------------------------------------------------- decoding (in worker processes)

# The only decoders a file may reach: Pillow would otherwise pick any plugin by content,
# and some (EPS) run an outside program (Ghostscript) to decode.
PILLOW_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "WEBP")


def _registered(Image) -> tuple[str, ...]:
    Image.init()  # every plugin Pillow has, so that the names below are all known to it
    return tuple(f for f in PILLOW_FORMATS if f in Image.OPEN)


def _open(Image, path: str):
    """Pillow's image, header read, with the decompression-bomb limit as an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path, formats=_registered(Image))


def _reason(e: BaseException, path: str) -> str:
    Image = _pillow()
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"decompression bomb: {str(e).split('could be')[0].strip().rstrip(',')}"
    if isinstance(e, Image.UnidentifiedImageError):
        try:
            empty = os.path.getsize(path) == 0
        except OSError:
            empty = False
        return "empty file (0 bytes)" if empty else "not a PNG, JPEG, BMP, GIF or WebP image"
    if isinstance(e, MemoryError):
        return "too large to decode in memory"
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]


def _headers(paths: list[str]) -> list[tuple[str, int, int] | str]:
    """(mode, width, height) per file, or the reason it cannot be read."""
    Image = _pillow()
    out = []
    for p in paths:
        try:
            with _open(Image, p) as img:
                out.append((img.mode, img.width, img.height))
        except Exception as e:  # noqa: BLE001 - any failure of a file is that file's reason
            out.append(_reason(e, p))
    return out


def convert(img, channels: int):
    """The image in mode L (channels 1) or RGB (3), from any Pillow mode (alpha dropped,
    16-bit grey scaled to 8 bits)."""
    Image = _pillow()
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img, dtype=np.int64)
        img = Image.fromarray((np.clip(a, 0, 65535) // 257).astype(np.uint8), "L")
    elif mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        if target == "L" and img.mode not in ("1", "L", "LA", "RGB", "RGBA", "P", "PA"):
            img = img.convert("RGB")
        img = img.convert(target)
    return img


def fit(img, width: int, height: int):
    """The size policy: scale to cover width x height (shorter side first), centre-crop."""
    Image = _pillow()
    w, h = img.size
    if (w, h) == (width, height):
        return img
    scale = max(width / w, height / h)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - width) // 2, (nh - height) // 2
    return img.crop((left, top, left + width, top + height))


def _decode(paths: list[str], channels: int, width: int, height: int, sums: bool = False):
    """uint8 N,C,H,W for the files, and (index, reason) of those that failed; with `sums`
    also each image's per-channel pixel sum and sum of squares (int64, exact)."""
    Image = _pillow()
    out = np.zeros((len(paths), channels, height, width), dtype=np.uint8)
    bad = []
    for i, p in enumerate(paths):
        try:
            with _open(Image, p) as img:
                img.load()
                a = np.asarray(fit(convert(img, channels), width, height), dtype=np.uint8)
            out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        except Exception as e:  # noqa: BLE001
            bad.append((i, _reason(e, p)))
    if not sums:
        return out, bad
    flat = out.reshape(len(paths), channels, -1)
    stats = np.stack([flat.sum(-1, dtype=np.int64),
                      np.stack([np.square(img, dtype=np.int64).sum(-1) for img in flat]) if len(paths) else
                      np.zeros((0, channels), np.int64)], axis=-1)
    return out, bad, stats


def _pool(workers: int):
    ctx = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_start,
                               initargs=(os.getpid(),))


def _worker_start(parent: int) -> None:
    """A decode worker ends with its parent, however the parent ends (kill -9 included):
    otherwise it waits on its pipe for ever, holding the cache file and the parent's output.
    Ctrl-C and SIGTERM are the parent's to handle; it cancels the pool."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _new_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A new uint8 .npy of `shape`, memory-mapped for writing, its blocks reserved on disk first:
    a write into a sparse mapping on a full disk kills the process (SIGBUS) with no message,
    where reserving raises ENOSPC here, as an error trainlab can say in one sentence."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                del arr
                raise
        finally:
            os.close(fd)
    return arr


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def _workers(n_files: int, workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    if n_files <= SMALL:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                      math.ceil(n_files / SMALL)))


def _map(fn, jobs: list[tuple], workers: int, total: int, desc: str):
    """fn(*job) for each job, in order, in `workers` processes, with one progress bar."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", disable=None, leave=False)
    try:
        if workers == 1:
            for job in jobs:
                r = fn(*job)
                bar.update(len(job[0]))
                yield r
            return
        pool = _pool(workers)
        try:
            for job, r in zip(jobs, pool.map(fn, *zip(*jobs))):
                bar.update(len(job[0]))
                yield r
        except BaseException:  # Ctrl-C, SIGTERM, an error: the queued jobs are dropped, not run
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    finally:
        bar.close()


def _most_common(counter: Counter):
    """The most frequent value; ties go to the largest (then the last in sort order)."""
    return max(counter.items(), key=lambda kv: (kv[1], kv[0]))[0]


def _bad_sentence(root: Path, bad: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{rel} ({why})" for rel, why in bad[:SHOWN_BAD])
    more = f" and {len(bad) - SHOWN_BAD} more" if len(bad) > SHOWN_BAD else ""
    return (f"folder:{root}: {len(bad)} file{'s' if len(bad) > 1 else ''} cannot be decoded: {shown}{more}; "
            "fix or remove them, or pass --skip-bad (skip_bad = true) to leave them out")


def decode_folder(s: Scan, image_size: int | None = None, workers: int | None = None,
                  dest: Path | None = None) -> tuple[np.ndarray, dict]:
    """Decode every file of the scan into `dest`/images.npy (uint8 N,C,H,W, the good files in
    scan order); returns (the array, memory-mapped, and the meta dict describing it)."""
    Image = _pillow()  # noqa: F841 - the one sentence when Pillow is missing, before any work
    paths = [str(s.root / r) for r in s.rels]
    n = len(paths)
    nproc = _workers(n, workers)
    head_chunk = max(64, min(2048, math.ceil(n / (4 * nproc))))
    headers = []
    for part in _map(_headers, [(paths[a:b],) for a, b in _chunks(n, head_chunk)], nproc, n, "headers"):
        headers += part
    bad = [(s.rels[i], h) for i, h in enumerate(headers) if isinstance(h, str)]
    ok = [i for i, h in enumerate(headers) if not isinstance(h, str)]
    if not ok:
        raise DataError(_bad_sentence(s.root, bad).split("; fix")[0] + "; no image could be read")
    modes = Counter(headers[i][0] for i in ok)
    sizes = Counter((headers[i][1], headers[i][2]) for i in ok)
    grey = sum(c for m, c in modes.items() if m in GREY_MODES)
    channels = 1 if grey * 2 > len(ok) else 3
    if image_size is not None:
        width = height = image_size
        policy = f"shorter side resized to {image_size}, centre-cropped to {image_size}x{image_size}"
    else:
        width, height = _most_common(sizes)
        policy = (f"all {width}x{height}, kept as they are" if len(sizes) == 1 else
                  f"the most common size {width}x{height} ({sizes[(width, height)]} of {len(ok)} files); "
                  f"the other {len(ok) - sizes[(width, height)]} scaled to cover it and centre-cropped")
    if max(width, height) > MAX_SIDE:
        raise DataError(f"folder:{s.root}: the images are {width}x{height}, over {MAX_SIDE} pixels a side; "
                        "give a smaller --image-size N")
    converted = sum(c for m, c in modes.items() if m != ("L" if channels == 1 else "RGB"))
    log.info("data: %d channel%s (%s); %d file%s converted; size: %s", channels, "" if channels == 1 else "s",
             ", ".join(f"{m}: {c}" for m, c in sorted(modes.items(), key=lambda kv: -kv[1])),
             converted, "" if converted == 1 else "s", policy)
    per_image = channels * width * height
    need = per_image * len(ok) + len(ok) * (channels * 16 + 200) + (64 << 10)  # pixels, sums, meta.json
    dest.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest).free
    if need > free:
        from trainlab.config import format_bytes

        raise DataError(f"folder:{s.root}: decoding needs {format_bytes(need)} in the cache "
                        f"{dest.parent} but only {format_bytes(free)} is free; free some space, "
                        "set XDG_CACHE_HOME to a larger disk, or choose a smaller --image-size")
    out_path = dest / "images.npy"
    arr = _new_npy(out_path, (len(ok), channels, height, width))
    chunk = max(1, min(512, (32 << 20) // per_image, math.ceil(len(ok) / (4 * nproc))))
    spans = _chunks(len(ok), chunk)
    jobs = [([paths[ok[i]] for i in range(a, b)], channels, width, height, True) for a, b in spans]
    failed = []
    sums = np.zeros((len(ok), channels, 2), dtype=np.int64)
    for (a, _), (pixels, errs, st) in zip(spans, _map(_decode, jobs, nproc, len(ok), "decode")):
        arr[a:a + len(pixels)] = pixels
        sums[a:a + len(pixels)] = st
        failed += [(a + i, why) for i, why in errs]
    good = [ok[i] for i in range(len(ok))]
    if failed:
        drop = {i for i, _ in failed}
        bad += [(s.rels[ok[i]], why) for i, why in failed]
        keep = [i for i in range(len(ok)) if i not in drop]
        good = [ok[i] for i in keep]
        sums = sums[keep]
        if keep:
            tmp = dest / "images-kept.npy"
            kept = _new_npy(tmp, (len(keep),) + arr.shape[1:])
            for a, b in _chunks(len(keep), 4096):
                kept[a:b] = arr[keep[a:b]]
            kept.flush()
            del kept
            del arr
            os.replace(tmp, out_path)
        else:
            del arr
            os.remove(out_path)
    else:
        arr.flush()
        del arr
    bad.sort()
    meta = {"version": CACHE_VERSION, "root": str(s.root), "layout": s.layout, "classes": s.classes,
            "channels": channels, "width": width, "height": height, "policy": policy,
            "image_size": image_size, "files": [s.rels[i] for i in good],
            "labels": [s.labels[i] for i in good], "splits": [s.splits[i] for i in good],
            "modes": dict(modes), "sizes": {f"{w}x{h}": c for (w, h), c in sizes.most_common()},
            "bad": bad, "ignored": s.ignored}
    np.save(dest / "sums.npy", sums, allow_pickle=False)
    images = np.load(out_path, mmap_mode="r") if good else np.zeros((0, channels, height, width), np.uint8)
    return images, meta


def _write_meta(path: Path, meta: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:  # inside the fresh temporary folder
        json.dump(meta, f)


def _read_cache(folder: Path, s: Scan, image_size: int | None) -> tuple[np.ndarray, dict] | None:
    """The cache's images (memory-mapped) and meta, or None when anything in it is damaged or
    does not describe this scan: the caller then decodes again."""
    meta_path, images_path, sums_path = folder / "meta.json", folder / "images.npy", folder / "sums.npy"
    try:
        if meta_path.stat().st_size > _MAX_META:
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not _meta_describes(meta, s, image_size):
            return None
        n = len(meta["files"])
        shape = (n, meta["channels"], meta["height"], meta["width"])
        if sums_path.stat().st_size > n * shape[1] * 2 * 8 + 4096:  # a bound before reading it
            return None
        images = np.load(images_path, mmap_mode="r", allow_pickle=False) if n else np.zeros(shape, np.uint8)
        sums = np.load(sums_path, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if images.dtype != np.uint8 or images.shape != shape or sums.shape != (n, shape[1], 2) or sums.dtype != np.int64:
        return None
    meta["sums"] = sums
    return images, meta


def _is_int(v, low: int, high: int | None = None) -> bool:
    return type(v) is int and v >= low and (high is None or v <= high)


def _counts(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _is_int(c, 0) for k, c in v.items())


def _meta_describes(meta, s: Scan, image_size: int | None) -> bool:
    """Whether a cache's meta.json is well formed and agrees with the scan it is keyed by: the
    files are the scan's (in its order) with their own labels and splits, and every other file
    of the scan is listed as bad. A damaged or edited meta.json is decoded again, never trusted."""
    if not (isinstance(meta, dict) and meta.get("version") == CACHE_VERSION and meta.get("layout") == s.layout
            and meta.get("classes") == s.classes and meta.get("image_size") == image_size
            and meta.get("channels") in (1, 3) and type(meta.get("channels")) is int
            and _is_int(meta.get("width"), 1, MAX_SIDE) and _is_int(meta.get("height"), 1, MAX_SIDE)
            and isinstance(meta.get("policy"), str) and meta.get("ignored") == s.ignored
            and _counts(meta.get("modes")) and _counts(meta.get("sizes"))):
        return False
    files, bad = meta.get("files"), meta.get("bad")
    if not (isinstance(files, list) and isinstance(bad, list) and len(files) + len(bad) == len(s.rels)):
        return False
    if not all(isinstance(b, list) and len(b) == 2 and all(isinstance(x, str) for x in b) for b in bad):
        return False
    if not bad:  # the usual case, in one comparison per list
        return files == s.rels and meta.get("labels") == s.labels and meta.get("splits") == s.splits
    where = {r: i for i, r in enumerate(s.rels)}
    rows = [where.get(f, -1) if isinstance(f, str) else -1 for f in files]
    if any(b <= a for a, b in zip([-1] + rows, rows)):  # each a scanned file, in scan order, once
        return False
    if {b[0] for b in bad} != set(s.rels) - set(files):
        return False
    return meta.get("labels") == [s.labels[i] for i in rows] and meta.get("splits") == [s.splits[i] for i in rows]


STALE_SECONDS = 24 * 3600  # a temporary folder this old was left by a killed process


def _remove_stale(base: Path) -> None:
    """Temporary folders (.decode-*, .splits-*, .stale-*) a killed process left a day ago or more."""
    import time

    now = time.time()
    for tag in (".decode-", ".splits-", ".stale-"):
        for p in base.glob(f"{tag}*"):
            try:
                if p.is_dir() and not p.is_symlink() and now - p.lstat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass


def load_decoded(root: str | os.PathLike, image_size: int | None = None, workers: int | None = None
                 ) -> tuple[np.ndarray, dict, Scan]:
    """The folder's images (uint8 N,C,H,W, memory-mapped from the cache, decoding it first
    when needed) and the cache's meta: files, labels, splits, policy, modes, sizes, bad files."""
    s = scan(root)
    _pillow()
    key = cache_key(s, image_size, None)
    base = cache_root() / "folder"
    final = base / key
    hit = _read_cache(final, s, image_size) if final.is_dir() else None
    if hit is not None:
        log.info("data: read the decoded cache %s (%d images)", final, len(hit[1]["files"]))
        return hit[0], hit[1], s
    if final.exists():  # damaged or from an older trainlab: set aside whole, then removed
        _set_aside(final)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"the cache folder {base} cannot be created ({e.strerror or e}); "
                        "set XDG_CACHE_HOME to a writable folder") from None
    _remove_stale(base)
    tmp = base / f".decode-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()  # fresh: fails if anything stands at the name
        images, meta = decode_folder(s, image_size, workers, tmp)
        del images  # the mapping is reopened from the final place
        _write_meta(tmp / "meta.json", meta)  # sums.npy beside it, from decode_folder
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # another process won the race: its copy is as good
                raise
    except OSError as e:  # a full or read-only disk, mostly: nothing half-written is kept
        raise DataError(f"folder:{s.root}: decoding into the cache {base} failed ({e.strerror or e}); "
                        "free some space or set XDG_CACHE_HOME to a writable disk with room") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    hit = _read_cache(final, s, image_size)
    if hit is None:
        raise DataError(f"the decode cache {final} cannot be read back; remove it and try again")
    log.info("data: decoded %d images of %s into the cache %s", len(meta["files"]), s.root, final)
    return hit[0], hit[1], s


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


def _sha256(arr: np.ndarray) -> str:
    """payload_sha256 of a contiguous uint8 array, 64 MiB at a time (a mapped file stays mapped)."""
    h = hashlib.sha256()
    flat = arr.reshape(-1)
    for a in range(0, len(flat), 64 << 20):
        h.update(memoryview(np.ascontiguousarray(flat[a:a + (64 << 20)])))
    return h.hexdigest()


def _mapped_splits(cache: Path, images: np.ndarray, parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each split's rows as its own .npy beside the decode cache (written once, in a fresh
    temporary folder renamed whole), memory-mapped copy-on-write: nothing is read into memory.
    A folder whose files do not open as the expected arrays is set aside and written again."""
    key = hashlib.sha256(b"".join(np.asarray(parts[k], np.int64).tobytes() + b"|" for k in sorted(parts)))
    final = cache / f"splits-{key.hexdigest()[:32]}"
    _remove_stale(cache)
    for _ in range(2):
        if not final.is_dir():
            _write_splits(final, images, parts)
        try:
            split = {name: np.load(final / f"{name}.npy", mmap_mode="c", allow_pickle=False) for name in parts}
        except (OSError, ValueError):
            split = None
        if split is not None and all(a.dtype == np.uint8 and a.shape == (len(parts[n]),) + images.shape[1:]
                                     for n, a in split.items()):
            return split
        log.warning("data: the memory-mapped splits in %s are damaged; writing them again", final)
        _set_aside(final)
    raise DataError(f"the memory-mapped splits in {final} cannot be read back; remove {cache} and try again")


def _write_splits(final: Path, images: np.ndarray, parts: dict[str, np.ndarray]) -> None:
    tmp = final.parent / f".splits-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        for name, idx in parts.items():
            out = _new_npy(tmp / f"{name}.npy", (len(idx),) + images.shape[1:])
            for a in range(0, len(idx), 4096):
                out[a:a + 4096] = images[idx[a:a + 4096]]
            out.flush()
            del out
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # another process won the race: its copy is as good
                raise
    except OSError as e:
        raise DataError(f"the memory-mapped splits cannot be written in {final.parent} ({e.strerror or e}); "
                        "free some space or set XDG_CACHE_HOME to a writable disk with room") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _set_aside(path: Path) -> None:
    """Move a damaged cache folder out of the way whole (a reader never sees it half-removed),
    then remove it."""
    stale = path.parent / f".stale-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.rename(path, stale)
        shutil.rmtree(stale, ignore_errors=True)
    except OSError:
        pass


def read_folder(arg: str, data_dir=None, *, image_size: int | None = None, skip_bad: bool = False,
                seed: int = 0, memory_budget: str | None = None):
    """`folder:DIR` as a Dataset (see the module docstring)."""
    import torch

    from trainlab.data.dataset import from_arrays
    from trainlab.data.loader import derive_seed, stratified_split

    if image_size is not None and not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size = {image_size} is invalid: must be at least 1 and at most {MAX_IMAGE_SIZE} "
                          "(pixels a side)")
    root = Path(arg).expanduser()
    images, meta, _ = load_decoded(root, image_size)
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
        carved = {"fraction": TEST_FRACTION, "seed": seed, "files": [files[i] for i in np.nonzero(test_mask)[0]]}
    train_idx, test_idx = np.nonzero(~test_mask)[0], np.nonzero(test_mask)[0]
    source = {"kind": "folder", "path": str(root.resolve()), "layout": meta["layout"],
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
    from trainlab.config import format_bytes, parse_bytes
    from trainlab.data.loader import default_memory_budget

    budget = parse_bytes(memory_budget) if memory_budget is not None else default_memory_budget(torch.device("cpu"))
    if budget is not None and images.nbytes > budget:  # larger than memory: splits stay mapped
        from trainlab.data.dataset import Dataset
        from trainlab.data.idx import payload_sha256

        log.info("data: %s of images is over the memory budget (%s): the splits stay "
                 "memory-mapped and batches are streamed", format_bytes(images.nbytes), format_bytes(budget))
        split = _mapped_splits(Path(images.filename).parent, images, {"train": train_idx, "test": test_idx})
        ty, sy = labels[train_idx], labels[test_idx]
        source["mapped"] = True
        ds = Dataset(name=f"folder:{root}", classes=list(meta["classes"]),
                     train_x=torch.from_numpy(split["train"]), train_y=torch.from_numpy(ty),
                     test_x=torch.from_numpy(split["test"]), test_y=torch.from_numpy(sy),
                     mean=mean, std=std, source=source,
                     hashes={"train_images": _sha256(split["train"]), "train_labels": payload_sha256(ty),
                             "test_images": _sha256(split["test"]), "test_labels": payload_sha256(sy)})
        ds.spec = f"folder:{root.resolve()}"
        ds.val_rows = given_val
        return ds
    ds = from_arrays(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
                     classes=meta["classes"], name=f"folder:{root}", source=source, mean=mean, std=std)
    ds.spec = f"folder:{root.resolve()}"
    ds.val_rows = given_val
    return ds


read_folder.options = ("image_size", "skip_bad", "seed", "memory_budget")
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
