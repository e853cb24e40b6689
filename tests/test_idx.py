"""IDX files: exact round trips, and a strict error naming the file for every kind of damage."""

import gzip

import numpy as np
import pytest

from trainlab.data.catalog import SPLIT_FILES
from trainlab.data.dataset import read_idx_folder
from trainlab.errors import DataError
from trainlab.data.idx import encode_idx, payload_sha256, read_idx, write_idx

from conftest import make_images


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("arr", [
    np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    np.array([-7, 0, 2**31 - 1, -(2**31)], dtype=np.int32),
    np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
], ids=["uint8", "int32", "float32"])
def test_round_trip(tmp_path, name, arr):
    path = tmp_path / name
    write_idx(path, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert np.array_equal(back, arr)
    assert payload_sha256(back) == payload_sha256(arr)


def test_header_is_big_endian(tmp_path):
    raw = encode_idx(np.zeros((2, 3), dtype=np.int32))
    assert raw[:4] == b"\x00\x00\x0c\x02"
    assert raw[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")


def test_gzip_is_reproducible(tmp_path):
    arr = make_images(5)[0]
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b.gz", arr)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


GOOD = encode_idx(np.arange(6, dtype=np.uint8).reshape(2, 3))


@pytest.mark.parametrize("raw,words", [
    (b"\x01\x00" + GOOD[2:], "bad magic"),
    (GOOD[:2] + b"\x07" + GOOD[3:], "unknown IDX data type 0x07"),
    (GOOD[:6], "header truncated"),
    (GOOD[:-1], "payload truncated"),
    (GOOD + b"\x00", "trailing bytes"),
    (b"\x00\x00", "too short"),
    (b"\x00\x00\x08\x00", "zero dimensions"),
])
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_strict_errors_name_the_file(tmp_path, raw, words, gz):
    path = tmp_path / ("damaged.gz" if gz else "damaged")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match=words) as e:
        read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("cut", [lambda b: b[:-12], lambda b: b[:10] + b"\xff" * 8 + b[18:]],
                         ids=["truncated", "garbled"])
def test_corrupt_gzip_names_the_file(tmp_path, cut):
    path = tmp_path / "x.gz"
    path.write_bytes(cut(gzip.compress(encode_idx(make_images(20)[0]))))
    with pytest.raises(DataError, match="gzip stream is corrupt") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "nope.gz")
    with pytest.raises(DataError, match="is a folder"):
        read_idx(tmp_path)


def write_folder(folder, train_labels=None, test_labels=None):
    tx, ty = make_images(30, seed=1)
    sx, sy = make_images(10, seed=2)
    arrays = {"train_images": tx[:, 0], "train_labels": ty if train_labels is None else train_labels,
              "test_images": sx[:, 0], "test_labels": sy if test_labels is None else test_labels}
    folder.mkdir(exist_ok=True)
    for split, arr in arrays.items():
        write_idx(folder / f"{SPLIT_FILES[split]}.gz", arr)
    return folder


def test_folder_reads(tmp_path):
    ds = read_idx_folder(write_folder(tmp_path / "d"), "d")
    assert ds.train_x.shape == (30, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)


def test_label_count_mismatch(tmp_path):
    folder = write_folder(tmp_path / "d", train_labels=np.zeros(29, np.uint8))
    with pytest.raises(DataError, match="29 labels for 30 images"):
        read_idx_folder(folder, "d")


def test_label_out_of_range(tmp_path):
    labels = make_images(10, seed=2)[1].copy()
    labels[3] = 10
    folder = write_folder(tmp_path / "d", test_labels=labels)
    with pytest.raises(DataError, match="label 10 is out of range") as e:
        read_idx_folder(folder, "d", classes=[str(i) for i in range(10)])
    assert "t10k-labels" in str(e.value)


def test_missing_split_names_it(tmp_path):
    folder = write_folder(tmp_path / "d")
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        read_idx_folder(folder, "d")
