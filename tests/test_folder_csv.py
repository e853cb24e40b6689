"""csv:FILE, the Kaggle layout (a CSV of image paths and labels): the real mnist-10k written as
PNG files + a CSV equals its IDX source, trains and resumes bitwise; the CSV's labels key the
cache; hostile CSVs (paths leaving the folder, links, bad rows) end in one sentence."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, assert_resume_bitwise, make_images

pytest.importorskip("PIL", reason="image files need Pillow")

import trainlab  # noqa: E402
from trainlab.data import load_dataset  # noqa: E402
from trainlab.errors import ConfigError, DataError  # noqa: E402


def _write(folder, x, y, split=None, header="path,label", label_names=None):
    from PIL import Image

    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    rows = [header + (",split" if split else "")]
    for i, (a, lab) in enumerate(zip(x, y)):
        name = f"imgs/{(split or ['train'] * len(x))[i]}-{i:05d}.png"
        Image.fromarray(a).save(folder / name)
        lab = label_names[lab] if label_names else lab
        rows.append(f"{name},{lab}" + (f",{split[i]}" if split else ""))
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


@pytest.fixture(scope="module")
def mnist_as_csv(tmp_path_factory, real_mnist10k_dir):
    idx = load_dataset(f"idx:{real_mnist10k_dir}")
    x = np.concatenate([idx.train_x[:, 0].numpy(), idx.test_x[:, 0].numpy()])
    y = np.concatenate([idx.train_y.numpy(), idx.test_y.numpy()])
    split = ["train"] * len(idx.train_y) + ["test"] * len(idx.test_y)
    return _write(tmp_path_factory.mktemp("csv"), x, y, split), idx


def test_the_real_mnist10k_as_png_files_and_a_csv_equals_its_idx_source(mnist_as_csv):
    path, idx = mnist_as_csv
    data = load_dataset(f"csv:{path}")
    assert torch.equal(data.train_x, idx.train_x) and torch.equal(data.train_y, idx.train_y)
    assert torch.equal(data.test_x, idx.test_x) and torch.equal(data.test_y, idx.test_y)
    assert data.classes == [str(i) for i in range(10)] and data.spec == f"csv:{path.resolve()}"


def test_it_trains_and_resumes_bitwise(mnist_as_csv, tmp_path):
    path, _ = mnist_as_csv
    cfg = {**TINY_RUN, "dataset": f"csv:{path}", "val_size": 1000, "batch_size": 64, "epochs": 2}
    assert assert_resume_bitwise(cfg, tmp_path, 150).test_accuracy > 0.85


def test_named_columns_class_names_and_an_edited_label_reaches_the_data(tmp_path):
    x, y = make_images(60, seed=1)
    path = _write(tmp_path, x[:, 0], y, header="file,breed", label_names=[f"c{i}" for i in range(10)])
    with pytest.raises(DataError, match="no label column found .*csv:FILE#label=COLUMN"):
        load_dataset(f"csv:{path}")
    data = load_dataset(f"csv:{path}#label=breed")
    assert data.classes == [f"c{i}" for i in range(10)] and len(data.test_y) > 0  # a carved test split
    text = path.read_text()
    first = text.splitlines()[1]
    path.write_text(text.replace(first, first.rsplit(",", 1)[0] + ",c9", 1))  # one label edited
    again = load_dataset(f"csv:{path}#label=breed")
    changed = (torch.cat([again.train_y, again.test_y]) != torch.cat([data.train_y, data.test_y])).sum()
    assert int(changed) >= 1  # the cache is keyed by the CSV's labels too: never the old label
    with pytest.raises(ConfigError, match="path=COLUMN"):
        load_dataset(f"csv:{path}#colour=x")


@pytest.mark.parametrize("row, words", [
    ("../outside.png,1", "is not a path inside"),
    ("/etc/passwd,1", "is not a path inside"),
    ("imgs/link.png,1", "is not a path inside"),
    ("imgs/missing.png,1", "cannot be read"),
    ("imgs,1", "is not a regular file"),
    ("imgs/train-00000.png,1,extra", "has 3 fields"),
    ("imgs/train-00000.png,1", "listed twice"),
])
def test_hostile_rows_are_one_sentence(tmp_path, row, words):
    x, y = make_images(20, seed=2)
    path = _write(tmp_path, x[:, 0], y)
    (tmp_path.parent / "outside.png").write_bytes((tmp_path / "imgs" / "train-00001.png").read_bytes())
    os.symlink(tmp_path.parent / "outside.png", tmp_path / "imgs" / "link.png")
    path.write_text(path.read_text() + row + "\n")
    with pytest.raises(DataError, match=words):
        load_dataset(f"csv:{path}")


def test_odd_csv_files_are_one_sentence(tmp_path):
    cases = {"empty.csv": b"", "latin1.csv": "path,label\nimgs/\xe9.png,1\n".encode("latin-1"),
             "nosplit.csv": b"path,label,split\nimgs/a.png,1,holdout\n", "header.csv": b"path,label\n"}
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
    for name, words in (("empty.csv", "is empty"), ("latin1.csv", "not UTF-8"), ("nosplit.csv", "not train, val"),
                        ("header.csv", "lists no images"), ("missing.csv", "cannot read it")):
        with pytest.raises(DataError, match=words):
            load_dataset(f"csv:{tmp_path / name}")
    os.mkfifo(tmp_path / "fifo.csv")
    with pytest.raises(DataError, match="not a regular file"):
        load_dataset(f"csv:{tmp_path / 'fifo.csv'}")
