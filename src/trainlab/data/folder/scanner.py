"""The folder's layout, class names and image files, from the directory listing and one stat
per file (no decoding): what the decode cache is keyed by."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from trainlab.errors import DataError
from trainlab.text import printable

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLITS = ("train", "val", "test")
MAX_FILES = 10_000_000  # a bound on the scan: more is a wrong folder, not a data set


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
    # inode, device and status-change time: a copy (cp -a, rsync -a, tar) keeps size and mtime
    # but never the inode nor the ctime, and any write or `touch -r` after it moves the ctime
    # (no program can set it back), so these tell a file's content apart at no extra syscall
    inodes: list[int] = field(default_factory=list)
    devices: list[int] = field(default_factory=list)
    ctimes_ns: list[int] = field(default_factory=list)
    ignored: int = 0  # entries skipped: another extension, a leading ".", not a regular file


def _shown(name: str) -> str:
    return printable(name)


def _utf8(root: Path, rel: str, what: str) -> None:
    """Names are written into meta.json, results and reports as text: a name that is not
    UTF-8 (bytes a terminal cannot show) is refused here, before any work, not there."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"folder:{_shown(str(root))}: the {what} name {_shown(rel)} is not UTF-8 text; "
                        "rename it (class and file names are written into the run's results)") from None


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
            raise DataError(f"folder:{root}: it has train/ and also {', '.join(map(_shown, extra[:3]))}/: in the "
                            "split layout only train/, val/ and test/ are read; move the other folders away")
        layout, split_dirs = "splits", [s for s in SPLITS if s in top]
        classes = _class_dirs(root / "train")
    else:
        layout, split_dirs, classes = "classes", [""], top
    if not classes:
        raise DataError(f"folder:{root}: no class folders found; put the images in DIR/<class>/ "
                        "(one folder per class) or DIR/train/<class>/")
    for c in classes:
        _utf8(root, c + "/", "class folder")
    out = Scan(root, layout, classes)
    index = {c: i for i, c in enumerate(classes)}
    jobs = []  # (folder, prefix, label, split): one per class folder of each split
    for split in split_dirs:
        base = root / split if split else root
        for name in _class_dirs(base):
            if name not in index:
                raise DataError(f"folder:{root}: {split}/{_shown(name)}/ is a class that train/ does not have; "
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
                        f"{', '.join(map(_shown, empty[:5]))} hold{'' if len(empty) > 1 else 's'} no training images "
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
    rels, sizes, mtimes, inodes, devices, ctimes = (out.rels, out.sizes, out.mtimes_ns, out.inodes,
                                                    out.devices, out.ctimes_ns)
    first, is_file = len(rels), stat.S_ISREG
    for e in listing:
        file = e.name
        if file[0] == "." or not file.lower().endswith(EXTENSIONS):
            continue
        try:
            st = e.stat()
        except OSError as err:  # e.g. a dangling or looping link
            raise DataError(f"{_shown(e.path)}: cannot read it ({err.strerror or err}); remove it or move it "
                            "out of the folder") from None
        if is_file(st.st_mode):
            if not file.isascii():
                _utf8(root, prefix + file, "file")
            rels.append(prefix + file)
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
            inodes.append(st.st_ino)
            devices.append(st.st_dev)
            ctimes.append(st.st_ctime_ns)
    found = len(rels) - first
    out.labels += [label] * found
    out.splits += [kind] * found
    return len(listing) - found
