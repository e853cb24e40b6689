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
from collections import Counter
from pathlib import Path

import numpy as np

from trainlab.data import formats
from trainlab.errors import ConfigError, DataError

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


def _load(root: Path):
    """{"train": Dataset, "test": Dataset or None} from a save_to_disk folder or .parquet files."""
    datasets = _datasets()
    if not root.is_dir():
        raise DataError(f"hf:{root}: no such folder; name a folder written by save_to_disk, or one of .parquet files")
    parquet = sorted(root.glob("*.parquet"))
    try:
        if parquet and not (root / "dataset_dict.json").exists() and not (root / "dataset_info.json").exists():
            splits = {"train": [p for p in parquet if "test" not in p.stem], "test": [p for p in parquet
                                                                                    if "test" in p.stem]}
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


def _decode_rows(ds, image_col: str, size, channels: int, where: str, skip_bad: bool):
    """uint8 N,C,H,W of the column's images through folder:'s decoder, and the rows kept."""
    from trainlab.data.folder.decode import _pillow, _reason, decode_one

    datasets = _datasets()
    Image = _pillow()
    raw = ds.cast_column(image_col, datasets.Image(decode=False))[image_col]
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
    from trainlab.data.folder.decode import _open, _pillow

    datasets = _datasets()
    Image = _pillow()
    sizes, modes = Counter(), Counter()
    for item in ds.cast_column(image_col, datasets.Image(decode=False)).select(range(min(1000, len(ds))))[image_col]:
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


def read_hf(arg: str, data_dir=None, *, image_size: int | None = None, skip_bad: bool = False, seed: int = 0,
            memory_budget=None):
    import torch

    from trainlab.data.dataset import from_arrays
    from trainlab.data.loader import derive_seed, stratified_split

    root, chosen = _options(arg)
    where = f"hf:{root}"
    parts = _load(root)
    train = parts["train"]
    if not 0 < len(train) <= MAX_ROWS:
        raise DataError(f"{where}: its train split holds {len(train)} rows; trainlab reads 1 to {MAX_ROWS:,}")
    image_col, label_col = _columns(train, chosen, where)
    feature = train.features[label_col]
    classes = list(feature.names) if hasattr(feature, "names") else None
    size, channels = _policy(train, image_col, image_size)
    tx, kept = _decode_rows(train, image_col, size, channels, f"{where} train", skip_bad)
    ty = np.asarray(train[label_col], dtype=np.int64)[kept]
    if parts["test"] is not None:
        sx, kept_test = _decode_rows(parts["test"], image_col, size, channels, f"{where} test", skip_bad)
        sy = np.asarray(parts["test"][label_col], dtype=np.int64)[kept_test]
        test_split = "test split"
    else:  # carved, seeded and stratified, as folder: does
        n_test = round(len(ty) * TEST_FRACTION)
        if n_test < 1:
            raise DataError(f"{where}: {len(ty)} images are too few to carve a test split; save a test split")
        keep, test = stratified_split(torch.from_numpy(ty), n_test, derive_seed(seed, _TEST_SALT))
        tx, ty, sx, sy = tx[keep.numpy()], ty[keep.numpy()], tx[test.numpy()], ty[test.numpy()]
        test_split = f"carved: {TEST_FRACTION:.0%} of each class, seed {seed}"
    if classes is None:
        classes = [str(i) for i in range(int(max(ty.max(initial=0), sy.max(initial=0))) + 1)]
    ds = from_arrays(tx, ty, sx, sy, name=f"hf:{root.name}", classes=classes,
                     source={"kind": "hf", "path": str(root.resolve()),
                             "detail": f"columns {image_col!r} / {label_col!r}, {test_split}"})
    return ds


read_hf.options = ("image_size", "skip_bad", "seed")
formats.register_format("hf", read_hf)
