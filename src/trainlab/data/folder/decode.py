"""Decoding image files with Pillow into uint8 N,C,H,W pixels, in parallel worker processes.

Only the PNG, JPEG, BMP, GIF and WebP decoders are ever tried. A file's decode costs at most
its decoded raster (bounded by Pillow's decompression-bomb limit) plus what the output needs:
a JPEG is decoded already scaled down (draft), and other images are converted to 8 bits and
box-reduced a strip at a time, never widened whole (a 16-bit 9400x9400 PNG widened to int64
and copied, as numpy would, is ~1.8 GB per worker)."""

from __future__ import annotations

import errno
import logging
import math
import multiprocessing
import os
import shutil
import sys
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from trainlab.data.folder.scanner import Scan
from trainlab.errors import DataError
from trainlab.text import format_bytes

MAX_SIDE = 16384  # the chosen size (the most common one) is at most this many pixels a side
SMALL = 256  # files decoded in this process, without a pool
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "La"}
SHOWN_BAD = 5  # bad files listed by name in the error; the rest are counted
STRIP_PIXELS = 1 << 22  # source pixels converted at a time: a strip's copies stay a few MB

log = logging.getLogger("trainlab.data")


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading image folders needs Pillow: pip install trainlab[images]") from None
    return Image




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
    16-bit grey scaled to 8 bits: v // 257, so 65535 is 255). Done on the image as given: call
    it on strips of a large one (see `prepare`)."""
    Image = _pillow()
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img)  # uint16 / int32 / float32 as stored: never widened further
        if mode == "F":
            a = np.clip(np.nan_to_num(a, posinf=255.0, neginf=0.0), 0, 255)
        elif mode == "I":
            a = np.clip(a, 0, 65535) // 257
        else:
            a = a // 257
        img = Image.fromarray(a.astype(np.uint8), "L")
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        if target == "L" and img.mode not in ("1", "L", "LA", "RGB", "RGBA", "P", "PA"):
            img = img.convert("RGB")
        img = img.convert(target)
    return img


def _cover(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """The size the image is scaled to before the centre crop: the smallest covering width x height."""
    w, h = size
    scale = max(width / w, height / h)
    return max(width, round(w * scale)), max(height, round(h * scale))


def _factor(size: tuple[int, int], width: int, height: int) -> int:
    """The whole factor an image can be box-reduced by and still cover its resize target."""
    nw, nh = _cover(size, width, height)
    return max(1, min(size[0] // nw, size[1] // nh))


def prepare(img, channels: int, width: int, height: int):
    """`convert`; for an image over STRIP_PIXELS, a strip of rows at a time, then box-reduced
    by the whole factor that still covers what `fit` needs (as Pillow's own reducing_gap does):
    memory is the loaded raster plus the reduced 8-bit output, whatever the mode's width.
    Strips of k-row multiples give exactly the whole image's result; smaller images are
    converted whole and resized by `fit` alone, as before."""
    Image = _pillow()
    w, h = img.size
    if w * h <= STRIP_PIXELS:
        return convert(img, channels)
    k = _factor(img.size, width, height)
    rows = k * max(1, STRIP_PIXELS // (w * k))
    out = Image.new("L" if channels == 1 else "RGB", (-(-w // k), -(-h // k)))
    for y in range(0, h, rows):
        part = convert(img.crop((0, y, w, min(h, y + rows))), channels)
        out.paste(part.reduce(k) if k > 1 else part, (0, y // k))
    return out


def fit_to(img, width: int, height: int):
    """The size policy: scale to cover width x height (shorter side first), centre-crop."""
    Image = _pillow()
    w, h = img.size
    if (w, h) == (width, height):
        return img
    nw, nh = _cover((w, h), width, height)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - width) // 2, (nh - height) // 2
    return img.crop((left, top, left + width, top + height))


def decode_one(Image, path: str, channels: int, width: int, height: int) -> np.ndarray:
    """One file as uint8 C,H,W (H,W,C from Pillow, transposed)."""
    with _open(Image, path) as src:
        if src.format in ("JPEG", "MPO"):  # decoded already scaled by 1/2, 1/4 or 1/8 where that covers
            src.draft(src.mode, _cover(src.size, width, height))
        src.load()
        img = prepare(src, channels, width, height)
        if img is not src:
            src.close()  # the full raster goes before the resize
        a = np.asarray(fit_to(img, width, height), dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _decode(paths: list[str], channels: int, width: int, height: int, sums: bool = False):
    """uint8 N,C,H,W for the files, and (index, reason) of those that failed; with `sums`
    also each image's per-channel pixel sum and sum of squares (int64, exact)."""
    Image = _pillow()
    out = np.zeros((len(paths), channels, height, width), dtype=np.uint8)
    bad = []
    for i, p in enumerate(paths):
        try:
            out[i] = decode_one(Image, p, channels, width, height)
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
    meta = {"root": str(s.root), "layout": s.layout, "classes": s.classes,
            "channels": channels, "width": width, "height": height, "policy": policy,
            "image_size": image_size, "files": [s.rels[i] for i in good],
            "labels": [s.labels[i] for i in good], "splits": [s.splits[i] for i in good],
            "modes": dict(modes), "sizes": {f"{w}x{h}": c for (w, h), c in sizes.most_common()},
            "bad": bad, "ignored": s.ignored}
    np.save(dest / "sums.npy", sums, allow_pickle=False)
    images = np.load(out_path, mmap_mode="r") if good else np.zeros((0, channels, height, width), np.uint8)
    return images, meta


