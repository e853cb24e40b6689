"""hf:DIR, a Hugging Face `datasets` data set saved on disk: the real mnist-10k written as one
(PNG bytes, a ClassLabel) reads back pixel for pixel and label for label as the IDX source,
trains and resumes bitwise; hostile or odd folders end in one sentence."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, assert_resume_bitwise, make_images

datasets = pytest.importorskip("datasets", reason="the optional datasets package is not installed")

import trainlab  # noqa: E402
from trainlab.data import load_dataset  # noqa: E402
from trainlab.errors import ConfigError, DataError  # noqa: E402


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _save(folder, train_x, train_y, test_x=None, test_y=None, classes=None, image="image", label="label"):
    feats = datasets.Features({image: datasets.Image(),
                               label: datasets.ClassLabel(names=classes or [str(i) for i in range(10)])})

    def split(x, y):
        return datasets.Dataset.from_dict({image: [{"bytes": _png(a), "path": None} for a in x],
                                           label: [int(v) for v in y]}, features=feats)
    parts = {"train": split(train_x, train_y)}
    if test_x is not None:
        parts["test"] = split(test_x, test_y)
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def mnist_as_hf(tmp_path_factory, real_mnist10k_dir):
    idx = load_dataset(f"idx:{real_mnist10k_dir}")
    folder = tmp_path_factory.mktemp("hf") / "mnist10k"
    _save(folder, idx.train_x[:, 0].numpy(), idx.train_y.numpy(), idx.test_x[:, 0].numpy(), idx.test_y.numpy())
    return folder, idx


def test_the_real_mnist10k_as_a_datasets_folder_equals_its_idx_source(mnist_as_hf):
    folder, idx = mnist_as_hf
    data = load_dataset(f"hf:{folder}")
    assert torch.equal(data.train_x, idx.train_x) and torch.equal(data.train_y, idx.train_y)
    assert torch.equal(data.test_x, idx.test_x) and torch.equal(data.test_y, idx.test_y)
    assert data.classes == [str(i) for i in range(10)]
    assert {k: data.hashes[k] for k in ("train_images", "test_images")} == \
        {k: idx.hashes[k] for k in ("train_images", "test_images")}  # (labels: int64 here, uint8 in IDX)


def test_it_trains_and_resumes_bitwise(mnist_as_hf, tmp_path):
    folder, _ = mnist_as_hf
    cfg = {**TINY_RUN, "dataset": f"hf:{folder}", "val_size": 1000, "batch_size": 64, "epochs": 2}
    assert assert_resume_bitwise(cfg, tmp_path, 150).test_accuracy > 0.85


def test_columns_by_name_a_carved_test_split_and_class_names(tmp_path):
    x, y = make_images(200, seed=1)
    folder = _save(tmp_path / "d", x[:, 0], y, classes=[f"c{i}" for i in range(10)], image="img", label="fine")
    data = load_dataset(f"hf:{folder}")  # found by feature type, whatever their names
    assert len(data.test_y) == 20 and len(data.train_y) == 180 and data.classes[3] == "c3"
    assert load_dataset(f"hf:{folder}#image=img,label=fine").hashes == data.hashes
    with pytest.raises(ConfigError, match="no column 'pixels'"):
        load_dataset(f"hf:{folder}#image=pixels")
    with pytest.raises(ConfigError, match="image=COLUMN"):
        load_dataset(f"hf:{folder}#colour=img")


def test_odd_and_hostile_folders_are_one_sentence(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(f"hf:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a saved data set|cannot be read"):
        load_dataset(f"hf:{tmp_path / 'empty'}")
    x, y = make_images(40, seed=2)
    folder = tmp_path / "bad"
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("abcdefghij"))})
    rows = [{"bytes": _png(a), "path": None} for a in x[:, 0]]
    rows[5] = {"bytes": b"\x89PNG\r\n\x1a\n broken", "path": None}
    rows[7] = {"bytes": None, "path": "/etc/passwd"}  # a path is never followed
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": rows, "label": [int(v) for v in y]},
                                                              features=feats)}).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"2 image\(s\) cannot be decoded .*--skip-bad"):
        load_dataset(f"hf:{folder}")
    data = load_dataset(f"hf:{folder}", skip_bad=True)
    assert len(data.train_y) + len(data.test_y) == 38


def test_a_parquet_folder_splits_by_the_hubs_file_names(tmp_path):
    """test.parquet and test-00000-of-00001.parquet are the test split; contest.parquet is not."""
    x, y = make_images(60, seed=3)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("abcdefghij"))})

    def part(lo, hi, name):
        datasets.Dataset.from_dict({"image": [{"bytes": _png(a), "path": None} for a in x[lo:hi, 0]],
                                    "label": [int(v) for v in y[lo:hi]]}, features=feats).to_parquet(tmp_path / name)
    part(0, 30, "contest.parquet")
    part(30, 40, "train-00000-of-00001.parquet")
    part(40, 60, "test-00000-of-00001.parquet")
    data = load_dataset(f"hf:{tmp_path}")
    assert len(data.test_y) == 20 and len(data.train_y) == 40
