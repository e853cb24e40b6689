"""`csv:FILE`: the usual Kaggle layout, a CSV of image paths and labels beside the images.

One row per image: a path column (relative to the CSV's folder; a path that leaves that folder,
absolute or through `..` or a link, is refused: a received CSV must not make trainlab read
other files), a label column (class names: sorted, numerically when every label is an
integer), and an optional split column (train / val / test). Columns are found by name
(path, file, filename, image, image_path, img; label, class, target, category; split) or
named: `csv:FILE#path=COL,label=COL,split=COL`. The result is a Scan, decoded and cached by
the same safe path as `folder:` (trainlab.data.folder.cache), keyed also by the labels and
splits the CSV gives.
"""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path

from trainlab.data.folder.scanner import MAX_FILES, SPLITS, Scan, _shown
from trainlab.errors import ConfigError, DataError

PATH_NAMES = ("path", "file", "filename", "image", "image_path", "img", "filepath")
LABEL_NAMES = ("label", "class", "target", "category", "labels")
MAX_CSV_BYTES = 1 << 30
MAX_CELL = 4096


def parse_spec(arg: str) -> tuple[Path, dict]:
    path, _, opts = arg.partition("#")
    chosen = {}
    for part in filter(None, opts.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in ("path", "label", "split") or not value:
            raise ConfigError(f"dataset csv:{arg} is invalid: after '#' give path=COLUMN, label=COLUMN and/or "
                              "split=COLUMN, e.g. csv:labels.csv#path=file,label=breed")
        chosen[key] = value
    return Path(path).expanduser(), chosen


def _column(header: list[str], chosen: dict, kind: str, names: tuple, where: str, required: bool = True):
    if kind in chosen:
        if chosen[kind] not in header:
            raise ConfigError(f"{where}: no column {_shown(chosen[kind])!r} (columns: {_shown(', '.join(header))})")
        return chosen[kind]
    found = next((h for h in header if h.strip().lower() in names), None)
    if found is None and required:
        raise DataError(f"{where}: no {kind} column found (columns: {_shown(', '.join(header))}); name it: "
                        f"csv:FILE#{kind}=COLUMN")
    return found


def _inside(root: Path, rel: str) -> bool:
    try:
        return os.path.commonpath([root, os.path.realpath(root / rel)]) == str(root)
    except ValueError:
        return False


def scan_csv(arg: str) -> Scan:
    csv_path, chosen = parse_spec(arg)
    where = f"csv:{_shown(str(csv_path))}"
    try:
        st = os.stat(csv_path)
    except OSError as e:
        raise DataError(f"{where}: cannot read it ({e.strerror or e}); name a CSV file of image paths and labels"
                        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{where} is not a regular file: name a CSV file of image paths and labels")
    if st.st_size > MAX_CSV_BYTES:
        raise DataError(f"{where} is {st.st_size / 2**30:.1f} GiB: more than any list of images needs; refused unread")
    root = Path(os.path.realpath(csv_path.parent))
    rows = []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise DataError(f"{where} is empty: its first line must name the columns (e.g. path,label)")
            path_col = header.index(_column(header, chosen, "path", PATH_NAMES, where))
            label_col = header.index(_column(header, chosen, "label", LABEL_NAMES, where))
            split_name = _column(header, chosen, "split", ("split", "subset", "fold"), where, required=False)
            split_col = header.index(split_name) if split_name else None
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(rows) >= MAX_FILES:
                    raise DataError(f"{where}: over {MAX_FILES:,} rows; is this the right file?")
                if len(row) != len(header) or any(len(c) > MAX_CELL for c in row):
                    raise DataError(f"{where}: line {line} has {len(row)} fields (the header has {len(header)}) "
                                    "or a field over 4096 characters; fix the file")
                split = row[split_col].strip().lower() if split_col is not None else "train"
                split = {"valid": "val", "validation": "val"}.get(split, split)
                if split not in SPLITS:
                    raise DataError(f"{where}: line {line}: split {_shown(row[split_col])!r} is not train, val or test")
                rows.append((row[path_col].strip(), row[label_col].strip(), split, line))
    except UnicodeDecodeError:
        raise DataError(f"{where} is not UTF-8 text; save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise DataError(f"{where}: not a readable CSV ({e})") from None
    if not rows:
        raise DataError(f"{where} lists no images")
    names = sorted({lab for _, lab, _, _ in rows})
    if all(n.lstrip("-").isdigit() for n in names):
        names = sorted(names, key=int)
    index = {n: i for i, n in enumerate(names)}
    out = Scan(Path(csv_path.parent), f"csv:{csv_path.name}", names)
    out.root = root
    for rel, label, split, line in rows:
        if not rel or os.path.isabs(rel) or not _inside(root, rel):
            raise DataError(f"{where}: line {line}: {_shown(rel)!r} is not a path inside {_shown(str(root))}; "
                            "the CSV may name only images in its own folder (relative paths, no '..')")
        try:
            fst = os.stat(root / rel)
        except OSError as e:
            raise DataError(f"{where}: line {line}: {_shown(rel)} cannot be read ({e.strerror or e})") from None
        if not stat.S_ISREG(fst.st_mode):
            raise DataError(f"{where}: line {line}: {_shown(rel)} is not a regular file")
        out.rels.append(rel.replace(os.sep, "/"))
        out.labels.append(index[label])
        out.splits.append(split)
        out.sizes.append(fst.st_size)
        out.mtimes_ns.append(fst.st_mtime_ns)
        out.inodes.append(fst.st_ino)
        out.devices.append(fst.st_dev)
        out.ctimes_ns.append(fst.st_ctime_ns)
    if len(set(out.rels)) != len(out.rels):
        raise DataError(f"{where}: an image is listed twice; each row must name another file")
    return out
