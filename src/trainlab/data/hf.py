"""`hf:DIR`: a Hugging Face `datasets` data set saved on disk (`save_to_disk`, a DatasetDict
with train and test splits or a single Dataset), or a folder of .parquet files, read offline
(no hub, no download, no dataset script: nothing in the folder can run code).

Columns: the image column is the one of feature type Image (else `image` / `img`), the label
column the ClassLabel one (else `label` / `labels`); `hf:DIR#image=COL,label=COL` names them.
Class names come from the ClassLabel feature. Images are decoded from their stored bytes by
trainlab's own decoder (the one `folder:` uses: PNG/JPEG/BMP/GIF/WebP only, the bomb limit an
error, large images in strips), to the most common mode and size or `image_size`. With no test
split, 10% of each class is carved off (seeded), as `folder:` does.

Needs the `datasets` package (pip install 'trainlab[hf]').
"""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np

from trainlab.data import formats
from trainlab.data.dataset import from_arrays
from trainlab.data.folder.decode import _open, _pillow, _reason, decode_one
from trainlab.data.loader import default_memory_budget, derive_seed, stratified_split
from trainlab.errors import ConfigError, DataError
from trainlab.text import format_bytes, parse_bytes

log = logging.getLogger("trainlab")

TEST_FRACTION = 0.1
_TEST_SALT = 0x4F7E57
MAX_ROWS = 10_000_000


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("hf:DIR needs the datasets package: pip install 'trainlab[hf]'") from None
    datasets.disable_progress_bars()
    return datasets


def _options(arg: str) -> tuple[Path, dict]:
    path, _, opts = arg.partition("#")
    chosen = {}
    for part in filter(None, opts.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in ("image", "label") or not value:
            raise ConfigError(f"dataset hf:{arg} is invalid: after '#' give image=COLUMN and/or label=COLUMN, "
                              "e.g. hf:DIR#image=img,label=fine_label")
        chosen[key] = value
    return Path(path).expanduser(), chosen


MAX_STATE_BYTES = 1 << 20  # a state.json / dataset_dict.json lists file names: small


def _plain_name(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name


def _json(path: Path, where: str):
    import json
    import stat

    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_STATE_BYTES:
            raise DataError(f"{where}: {path.name} is not a regular file of at most 1 MiB; save the data set again")
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise DataError(f"{where}: {path.name} cannot be read ({type(e).__name__}); save the data set again") from None


def _check_saved(root: Path, where: str) -> None:
    """A save_to_disk folder names its files in state.json (and its splits in dataset_dict.json);
    datasets would open any path written there (an absolute one, ../..), so each must be a plain
    name of a regular file inside the folder, as save_to_disk writes them."""
    folders = [root]
    if (root / "dataset_dict.json").exists() or (root / "dataset_dict.json").is_symlink():
        splits = _json(root / "dataset_dict.json", where)
        names = splits.get("splits") if isinstance(splits, dict) else None
        if not isinstance(names, list) or not all(_plain_name(n) for n in names):
            raise DataError(f"{where}: dataset_dict.json names splits that are not folders inside it; save it again")
        folders = [root / n for n in names]
    for folder in folders:
        state = folder / "state.json"
        if not (state.exists() or state.is_symlink()):
            continue  # datasets says what is missing
        state_json = _json(state, where)
        files = state_json.get("_data_files") if isinstance(state_json, dict) else None
        if not isinstance(files, list) or not all(
                isinstance(f, dict) and _plain_name(f.get("filename")) and (folder / f["filename"]).is_file()
                and not (folder / f["filename"]).is_symlink() for f in files):
            raise DataError(f"{where}: {folder.name}/state.json names data files that are not regular files inside "
                            "its folder (trainlab reads nothing outside the data set); save it again")


def _load(root: Path):
    """{"train": Dataset, "test": Dataset or None} from a save_to_disk folder or .parquet files."""
    datasets = _datasets()
    if not root.is_dir():
        raise DataError(f"hf:{root}: no such folder; name a folder written by save_to_disk, or one of .parquet files")
    parquet = sorted(root.glob("*.parquet"))
    parquet = parquet if not (root / "dataset_dict.json").exists() and not (root / "dataset_info.json").exists() else []
    if not parquet:
        _check_saved(root, f"hf:{root}")
    try:
        if parquet:
            # the Hub's names: test.parquet, test-00000-of-00001.parquet, data_test.parquet (not contest.parquet)
            tested = [p for p in parquet if "test" in re.split(r"[-_.]", p.stem.lower())]
            splits = {"train": [p for p in parquet if p not in tested], "test": tested}
            return {k: datasets.Dataset.from_parquet([str(p) for p in v]) if v else None for k, v in splits.items()}
        d = datasets.load_from_disk(str(root))
    except FileNotFoundError as e:
        raise DataError(f"hf:{root} is not a saved data set ({str(e).splitlines()[0][:200]}); name a folder "
                        "written by save_to_disk, or one of .parquet files") from None
    except Exception as e:  # noqa: BLE001 - any failure of the folder is the folder's
        raise DataError(f"hf:{root} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if isinstance(d, datasets.DatasetDict):
        if "train" not in d:
            raise DataError(f"hf:{root} has the splits {', '.join(d)} and no 'train': save it with a train split")
        return {"train": d["train"], "test": d.get("test")}
    return {"train": d, "test": None}


def _columns(ds, chosen: dict, where: str) -> tuple[str, str]:
    datasets = _datasets()
    feats = ds.features

    def pick(kind, types, names):
        if kind in chosen:
            if chosen[kind] not in feats:
                raise ConfigError(f"{where}: no column {chosen[kind]!r} (columns: {', '.join(feats)})")
            return chosen[kind]
        found = [c for c, f in feats.items() if isinstance(f, types)] or [c for c in names if c in feats]
        if not found:
            raise DataError(f"{where}: no {kind} column found (columns: {', '.join(feats)}); name it: "
                            f"hf:DIR#{kind}=COLUMN")
        return found[0]
    return pick("image", (datasets.Image,), ("image", "img")), pick("label", (datasets.ClassLabel,),
                                                                     ("label", "labels"))


def _raw_images(ds, image_col: str, where: str):
    """The column as undecoded {"bytes", "path"} entries; a column that cannot be one is said."""
    datasets = _datasets()
    try:
        return ds.cast_column(image_col, datasets.Image(decode=False))
    except Exception as e:  # noqa: BLE001 - arrow's cast errors: the column is not images
        raise DataError(f"{where}: the column {image_col!r} holds {str(ds.features[image_col])[:100]}, not images "
                        f"({type(e).__name__}); name the image column: hf:DIR#image=COLUMN") from None


def _labels(ds, label_col: str, where: str) -> np.ndarray:
    """int64 labels of a ClassLabel or integer column: floats, text and missing labels are refused,
    never truncated or parsed."""
    datasets = _datasets()
    feature = ds.features[label_col]
    if not (isinstance(feature, datasets.ClassLabel) or (isinstance(feature, datasets.Value) and any(
            feature.dtype == f"{u}int{b}" for u in ("", "u") for b in (8, 16, 32, 64)))):
        raise DataError(f"{where}: the label column {label_col!r} holds {str(feature)[:100]}, not class numbers: "
                        "name an integer or ClassLabel column with hf:DIR#label=COLUMN")
    column = ds.data.column(label_col)
    if column.null_count:
        raise DataError(f"{where}: {column.null_count} row(s) have no label in the column {label_col!r}; "
                        "drop them or give them a class")
    values = column.to_numpy()
    if values.dtype == np.uint64 and len(values) and values.max() > np.iinfo(np.int64).max:
        raise DataError(f"{where}: label {values.max()} is beyond any class count")
    return values.astype(np.int64)


def _decode_rows(ds, image_col: str, size, channels: int, where: str, skip_bad: bool):
    """uint8 N,C,H,W of the column's images through folder:'s decoder, and the rows kept."""
    Image = _pillow()
    raw = _raw_images(ds, image_col, where)[image_col]
    out = np.zeros((len(raw), channels, size[1], size[0]), dtype=np.uint8)
    kept, bad = [], []
    for i, item in enumerate(raw):
        data = item.get("bytes") if isinstance(item, dict) else None
        try:
            if not data:
                raise ValueError("no stored image bytes (a path outside the data set is never read)")
            out[len(kept)] = decode_one(Image, io.BytesIO(data), channels, size[0], size[1])
            kept.append(i)
        except Exception as e:  # noqa: BLE001 - any failure of a row is that row's reason
            bad.append((i, _reason(e, "") if not isinstance(e, ValueError) else str(e)))
    if bad and not skip_bad:
        i, why = bad[0]
        raise DataError(f"{where}: {len(bad)} image(s) cannot be decoded (row {i}: {why}); pass --skip-bad to "
                        "leave them out")
    if bad:
        log.warning("data: %s: left out %d image(s) that cannot be decoded (skip_bad)", where, len(bad))
    return out[: len(kept)], np.asarray(kept, dtype=np.int64)


def _policy(ds, image_col: str, image_size: int | None) -> tuple[tuple[int, int], int]:
    """(width, height) and channels: the most common size and mode of the first 1000 images, as folder: does."""
    Image = _pillow()
    sizes, modes = Counter(), Counter()
    for item in _raw_images(ds, image_col, "the data set").select(range(min(1000, len(ds))))[image_col]:
        try:
            with _open(Image, io.BytesIO(item["bytes"])) as img:
                sizes[img.size] += 1
                modes["L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"] += 1
        except Exception:  # noqa: BLE001 - counted when decoded
            continue
    if not sizes:
        raise DataError("the data set's first images cannot be read: check the image column")
    channels = 1 if modes.most_common(1)[0][0] == "L" else 3
    size = (image_size, image_size) if image_size else sizes.most_common(1)[0][0]
    return size, channels


def _fits(rows: int, size, channels: int, where: str, memory_budget) -> None:
    """The decoded images are held in memory (twice, briefly, as the Dataset copies them): refused
    before decoding when they would not fit, not after minutes and the machine's memory."""
    import torch


    need = rows * channels * size[0] * size[1]
    budget = parse_bytes(memory_budget) if memory_budget is not None else default_memory_budget(torch.device("cpu"))
    if budget is not None and need > budget:
        raise DataError(f"{where}: {rows:,} images of {channels}x{size[1]}x{size[0]} would take {format_bytes(need)} "
                        f"decoded, more than the memory budget ({format_bytes(budget)}): pass a smaller "
                        "--image-size, or save the images as a folder (folder: streams what does not fit)")


def read_hf(arg: str, data_dir=None, *, image_size: int | None = None, skip_bad: bool = False, seed: int = 0,
            memory_budget=None):
    import torch

    root, chosen = _options(arg)
    where = f"hf:{root}"
    parts = _load(root)
    train = parts["train"]
    if not 0 < len(train) <= MAX_ROWS:
        raise DataError(f"{where}: its train split holds {len(train)} rows; trainlab reads 1 to {MAX_ROWS:,}")
    image_col, label_col = _columns(train, chosen, where)
    feature = train.features[label_col]
    classes = list(feature.names) if hasattr(feature, "names") else None
    ty_all = _labels(train, label_col, f"{where} train")
    sy_all = _labels(parts["test"], label_col, f"{where} test") if parts["test"] is not None else None
    top = max(int(ty_all.max(initial=0)), int(sy_all.max(initial=0)) if sy_all is not None else 0)
    count = len(classes) if classes is not None else len(ty_all) + (len(sy_all) if sy_all is not None else 0)
    if top >= count:  # before the carve and the class table, which would be sized by it
        raise DataError(f"{where}: label {top} is out of range for "
                        + (f"its {count} class names" if classes is not None else
                           f"{count} labels without class names (labels must lie in 0..N-1)"))
    size, channels = _policy(train, image_col, image_size)
    _fits(len(train) + (len(parts["test"]) if parts["test"] is not None else 0), size, channels, where,
          memory_budget)
    tx, kept = _decode_rows(train, image_col, size, channels, f"{where} train", skip_bad)
    ty = ty_all[kept]
    if parts["test"] is not None:
        sx, kept_test = _decode_rows(parts["test"], image_col, size, channels, f"{where} test", skip_bad)
        sy = sy_all[kept_test]
        test_split = "test split"
    else:  # carved, seeded and stratified, as folder: does
        n_test = round(len(ty) * TEST_FRACTION)
        if n_test < 1:
            raise DataError(f"{where}: {len(ty)} images are too few to carve a test split; save a test split")
        keep, test = stratified_split(torch.from_numpy(ty), n_test, derive_seed(seed, _TEST_SALT))
        tx, ty, sx, sy = tx[keep.numpy()], ty[keep.numpy()], tx[test.numpy()], ty[test.numpy()]
        test_split = f"carved: {TEST_FRACTION:.0%} of each class, seed {seed}"
    ds = from_arrays(tx, ty, sx, sy, name=f"hf:{root.name}", classes=classes,
                     source={"kind": "hf", "path": str(root.resolve()),
                             "detail": f"columns {image_col!r} / {label_col!r}, {test_split}"})
    return ds


read_hf.options = ("image_size", "skip_bad", "seed", "memory_budget")
formats.register_format("hf", read_hf)
