"""trainlab.data.folder.scanner and the checks after it: a data set the scan accepts must be one
every later command (train, evaluate, compare, report) can handle, so names that are not UTF-8
and classes that cannot have both a training and a test image are refused before any work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image_folder

pytest.importorskip("PIL")

from trainlab.data import load_dataset
from trainlab.data.folder import scan
from trainlab.errors import DataError


def load(root, **kw):
    return load_dataset(f"folder:{root}", **kw)


def test_a_class_folder_name_that_is_not_utf8_is_refused_in_one_sentence(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    bad = os.fsencode(root) + b"/\xffclass"
    os.mkdir(bad)
    for i in range(5):
        shutil.copy(root / "a" / f"{i:04d}.png", bad + f"/{i}.png".encode())
    with pytest.raises(DataError, match=r"the class folder name \\udcffclass/ is not UTF-8 text; rename it") as e:
        scan(root)
    assert "\n" not in str(e.value) and "\udcff" not in str(e.value)


def test_a_file_name_that_is_not_utf8_is_refused_in_one_sentence(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    shutil.copy(root / "a" / "0000.png", os.fsencode(root / "b") + b"/x\xfe.png")
    with pytest.raises(DataError, match=r"the file name b/x\\udcfe\.png is not UTF-8 text; rename it"):
        load(root)


def test_utf8_names_beyond_ascii_are_read(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("chat noir", "caf\u00e9"), per_class=5)
    shutil.copy(root / "caf\u00e9" / "0000.png", root / "caf\u00e9" / "\u00e9t\u00e9.png")
    ds = load(root)
    assert ds.classes == ["caf\u00e9", "chat noir"] and len(ds.train_y) + len(ds.test_y) == 11


@pytest.mark.parametrize("per_class", [2, 3, 4])
def test_every_class_of_two_or_more_images_gets_a_test_and_a_training_image(tmp_path, per_class):
    classes = [f"c{i:02d}" for i in range(12)]
    root = write_image_folder(tmp_path / "d", classes=classes, per_class=per_class, size=(6, 5))
    for seed in (0, 1):
        ds = load(root, seed=seed)
        assert (np.bincount(ds.test_y.numpy(), minlength=12) >= 1).all()
        assert (np.bincount(ds.train_y.numpy(), minlength=12) >= 1).all()
        assert len(ds.source["test_carved"]["files"]) == len(ds.test_y)
    assert load(root, seed=1).source["test_carved"] == ds.source["test_carved"]  # seeded


def test_a_class_of_one_image_is_refused_before_training(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=6)
    for f in sorted((root / "c").iterdir())[1:]:
        f.unlink()
    with pytest.raises(DataError, match=r"class c has too few images to give both a training and a test image "
                                        r"\(1\); give each class at least 2 images, or a test/ folder"):
        load(root)


def test_a_test_folder_without_a_class_is_refused_before_training(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5, split="train")
    write_image_folder(root, classes=("a",), per_class=2, split="test")
    with pytest.raises(DataError, match=r"test/ has no images of class b \(every class needs test images"):
        load(root)


def test_a_class_whose_every_image_is_bad_is_refused_with_skip_bad(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=4)
    for f in (root / "c").iterdir():
        f.write_bytes(b"")
    with pytest.raises(DataError, match=r"class c has too few images"):
        load(root, skip_bad=True)
