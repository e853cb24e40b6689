"""Bad data in, one DataError (or ConfigError) sentence out: memory bounded by what the input
holds, and degenerate shapes refused where the data is assembled."""

from __future__ import annotations

import gzip
import tracemalloc

import numpy as np
import pytest
from conftest import make_images, write_idx_folder

from trainlab.data import from_arrays, load_dataset
from trainlab.data.idx import read_idx, write_idx
from trainlab.data.npy import read_npy
from trainlab.errors import ConfigError, DataError


def peak_bytes(fn):
    """(exception or result, peak bytes traced while running fn)."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except DataError as e:
            out = e
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def header(code: int, *dims: int) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


# --- the IDX reader: header first, memory bounded by the file -----------------------------------


def test_gzip_bomb_is_not_inflated(tmp_path):
    # 10 declared bytes, then 64 MiB of zeros that gzip to 64 KB: read 11 bytes, not 64 MiB
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(header(0x08, 10) + bytes(64 << 20), compresslevel=1))
    err, peak = peak_bytes(lambda: read_idx(path))
    assert isinstance(err, DataError) and "has trailing bytes" in str(err)
    assert peak < 4 << 20


def test_header_bigger_than_the_gzip_can_hold(tmp_path):
    path = tmp_path / "liar.gz"
    path.write_bytes(gzip.compress(header(0x08, 1 << 20, 1 << 10) + b"\x01" * 100))
    err, peak = peak_bytes(lambda: read_idx(path))
    assert isinstance(err, DataError) and "gzip file can inflate to" in str(err)
    assert peak < 1 << 20


def test_dimensions_do_not_overflow():
    # 65536**4 bytes wraps to 0 in int64 arithmetic
    from trainlab.data.idx import parse_idx

    with pytest.raises(DataError, match=r"= 18446744073709551616 bytes, more than the 4 GiB"):
        parse_idx(header(0x08, 65536, 65536, 65536, 65536))


@pytest.mark.parametrize("shape", [(0,), (5, 0, 28), (3, 28, 0)])
def test_zero_dimension_is_refused(tmp_path, shape):
    path = tmp_path / "empty.gz"
    path.write_bytes(gzip.compress(header(0x08, *shape)))
    with pytest.raises(DataError, match=r"holds no values"):
        read_idx(path)


def test_highly_compressible_real_data_still_reads(tmp_path):
    # all zeros compress ~1000:1, near deflate's limit: the size bound must not refuse them
    write_idx(tmp_path / "z.gz", np.zeros((8, 1024, 1024), np.uint8))
    assert read_idx(tmp_path / "z.gz").shape == (8, 1024, 1024)


def test_raw_size_is_checked_before_reading(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(header(0x0D, 1000, 1000) + b"\x00" * 10)
    err, peak = peak_bytes(lambda: read_idx(path))
    assert "payload truncated" in str(err) and "file holds 10" in str(err)
    assert peak < 1 << 20


def test_device_is_not_read():
    with pytest.raises(DataError, match="not a regular file"):
        read_idx("/dev/zero")


# --- class counts bounded by the data -----------------------------------------------------------


def test_huge_label_value_is_refused(tmp_path):
    folder = write_idx_folder(tmp_path / "d", n_train=40, n_test=10)
    labels = make_images(40, seed=1)[1].astype(np.int32)
    labels[7] = 10**9  # a 1 KB file once meant 10**9 class names
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError, match=r"label 1000000000 implies 1000000001 classes but there are "
                                        r"only 50 labels.*0\.\.N-1 with N at most 50"):
        load_dataset(f"idx:{folder}")


def test_more_classes_than_labels_is_refused():
    x, y = make_images(6, num_classes=3)
    with pytest.raises(DataError, match="label 12 implies 13 classes but there are only 12 labels"):
        from_arrays(x, np.array([0, 1, 2, 0, 1, 12]), x, y)


def test_classes_txt_not_utf8(tmp_path):
    folder = write_idx_folder(tmp_path / "d", n_train=20, n_test=10)
    (folder / "classes.txt").write_bytes("T-shirt\nPullover\nCafé\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"classes.txt: not UTF-8 text \(byte 0xe9 at offset 20\); "
                                        "save it as UTF-8"):
        load_dataset(f"idx:{folder}")


def test_classes_txt_too_large(tmp_path):
    folder = write_idx_folder(tmp_path / "d", n_train=20, n_test=10)
    (folder / "classes.txt").write_bytes(b"x\n" * (1 << 20))
    with pytest.raises(DataError, match="larger than 1 MiB"):
        load_dataset(f"idx:{folder}")


# --- degenerate data where data sets are assembled ----------------------------------------------

X, Y = make_images(20, num_classes=4, size=6)
XF = X.astype(np.float32) / 255


def with_nan(a, value):
    a = a.copy()
    a[3, 0, 1, 2] = value
    return a


@pytest.mark.parametrize("args,words", [
    ((np.zeros((20, 1, 0, 0), np.uint8), Y, np.zeros((4, 1, 0, 0), np.uint8), Y[:4]),
     r"arrays train: images of shape C,H,W = \(1, 0, 0\) hold no pixels"),
    ((X, Y, X[:0], Y[:0]), "arrays test: no images; each split needs at least one image"),
    ((X[:0], Y[:0], X, Y), "arrays train: no images"),
    ((with_nan(XF, np.nan), Y, XF, Y), r"arrays train: 1 pixel value is NaN or infinite \(the first in image 3\)"),
    ((XF, Y, with_nan(XF, np.inf), Y), "arrays test: 1 pixel value is NaN or infinite"),
    ((X, Y, XF, Y), "train images are uint8 but test images are float32"),
    ((X.astype(str), Y, X.astype(str), Y), "images must be numbers"),
    ((X, Y.astype(float) * np.nan, X, Y), "labels must be integers, got float64"),
    ((X, Y.astype(np.float32), X, Y), "labels must be integers"),
    ((X, Y[:, None], X, Y), r"labels must be one-dimensional, got shape \(20, 1\)"),
    ((X, Y[:5], X, Y), "5 labels for 20 images"),
    ((X, Y.astype(np.int64) - 1, X, Y), "negative label -1"),
    ((X[:, 0, 0], Y, X[:, 0, 0], Y), "images must be N,H,W or N,C,H,W"),
    ((X[:, None], Y, X[:, None], Y), "images must be N,H,W or N,C,H,W"),
    (([[1, 2], [3]], Y, X, Y), "cannot make an array of the data given"),
], ids=["zero-pixels", "no-test", "no-train", "nan", "inf", "mixed-dtypes", "str-images",
        "nan-labels", "float-labels", "2d-labels", "count-mismatch", "negative", "2d-images",
        "5d-images", "ragged"])
def test_degenerate_arrays(args, words):
    with pytest.raises(DataError, match=words) as e:
        from_arrays(*args)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("mean,std,words", [
    ([0.1, 0.2], [1.0], r"mean = \[0.1, 0.2\]: give one finite number or one per channel \(1 channel\)"),
    (0.5, 0.0, "std = 0.0: give one finite positive number"),
    (float("nan"), 1.0, "mean = nan"),
    (0.5, "wide", "std = 'wide'"),
])
def test_bad_mean_std_is_a_config_error(mean, std, words):
    with pytest.raises(ConfigError, match=words):
        from_arrays(X, Y, X, Y, mean=mean, std=std)


def test_nan_pixels_in_an_idx_folder(tmp_path):
    folder = write_idx_folder(tmp_path / "d", n_train=20, n_test=10)
    images = make_images(20, seed=1)[0][:, 0].astype(np.float32)
    images[5, 3, 3] = np.nan  # once: training "diverged", and the advice was a lower learning rate
    write_idx(folder / "train-images-idx3-ubyte.gz", images)
    with pytest.raises(DataError, match=r"train: 1 pixel value is NaN or infinite \(the first in image 5\)"):
        load_dataset(f"idx:{folder}")


# --- .npy files ---------------------------------------------------------------------------------


def npy_header(shape, descr="<f8") -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_round_trip(tmp_path, order):
    arr = np.asarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4), order=order)
    np.save(tmp_path / "a.npy", arr)
    assert np.array_equal(read_npy(tmp_path / "a.npy"), arr)


@pytest.mark.parametrize("body,words", [
    (npy_header((10**9,)) + bytes(100), "= 8000000000 bytes, more than the 4 GiB"),
    (npy_header((1000, 1000)) + bytes(100), "= 8000000 bytes, but the file holds 100"),
    (npy_header((0, 28, 28)), "holds no values"),
    (npy_header((3,), "|O") + bytes(24), "holds Python objects"),
    (b"\x93NUMPY\x01\x00" + b"\xff\xff", "not a readable .npy array"),
    (b"", "not a readable .npy array"),
])
def test_npy_header_is_checked_first(tmp_path, body, words):
    path = tmp_path / "bad.npy"
    path.write_bytes(body)
    err, peak = peak_bytes(lambda: read_npy(path))
    assert isinstance(err, DataError) and words in str(err), err
    assert peak < 1 << 20



# --- the real-data fixture without ../shared: trainlab's own chain, in the user's environment ---


def test_real_data_fixture_falls_back_to_the_users_chain(tmp_path, monkeypatch):
    import os

    import conftest

    monkeypatch.setattr(conftest, "REAL_DATA", tmp_path / "no-shared")  # a fresh clone
    monkeypatch.delenv("TRAINLAB_TEST_DATA", raising=False)
    named = write_idx_folder(tmp_path / "named", n_train=20, n_test=10)
    monkeypatch.setitem(conftest._REAL_ENV, "TRAINLAB_DATA", str(named))
    assert conftest._find_real_data() == named
    assert "TRAINLAB_DATA" not in os.environ  # the isolation is back
    cache = tmp_path / "real-cache"  # the user's cache, not the isolated one
    write_idx_folder(cache / "trainlab" / "fashion-mnist", n_train=20, n_test=10)
    monkeypatch.setitem(conftest._REAL_ENV, "TRAINLAB_DATA", None)
    monkeypatch.setitem(conftest._REAL_ENV, "XDG_CACHE_HOME", str(cache))
    assert conftest._find_real_data() == cache / "trainlab" / "fashion-mnist"
    monkeypatch.setitem(conftest._REAL_ENV, "TRAINLAB_DATA", str(tmp_path / "absent"))
    with pytest.raises(LookupError, match=r"no-shared is absent, and trainlab's own lookup failed: "
                                          r"TRAINLAB_DATA points at .*absent"):
        conftest._find_real_data()
