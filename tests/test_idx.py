"""IDX files: exact round trips, and a strict error naming the file for every kind of damage."""

import gzip

import numpy as np
import pytest
from conftest import make_images, write_idx_folder

from trainlab.catalog import SPLIT_FILES
from trainlab.data.idx_folder import read_idx_folder
from trainlab.data.idx import encode_idx, payload_sha256, read_idx, write_idx
from trainlab.errors import DataError


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


def write_folder_with_labels(folder, train_labels=None, test_labels=None):
    """The 30/10-image IDX folder (`write_idx_folder(folder, 30, 10)`) with other labels."""
    write_idx_folder(folder, 30, 10)
    for split, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        if labels is not None:
            write_idx(folder / f"{SPLIT_FILES[split]}.gz", labels)
    return folder


def test_folder_reads(tmp_path):
    ds = read_idx_folder(write_idx_folder(tmp_path / "d", 30, 10), "d")
    assert ds.train_x.shape == (30, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)


def test_label_count_mismatch(tmp_path):
    folder = write_folder_with_labels(tmp_path / "d", train_labels=np.zeros(29, np.uint8))
    with pytest.raises(DataError, match="29 labels for 30 images"):
        read_idx_folder(folder, "d")


def test_label_out_of_range(tmp_path):
    labels = make_images(10, seed=2)[1].copy()
    labels[3] = 10
    folder = write_folder_with_labels(tmp_path / "d", test_labels=labels)
    with pytest.raises(DataError, match="label 10 is out of range") as e:
        read_idx_folder(folder, "d", classes=[str(i) for i in range(10)])
    assert "t10k-labels" in str(e.value)


def test_missing_split_names_it(tmp_path):
    folder = write_idx_folder(tmp_path / "d", 30, 10)
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        read_idx_folder(folder, "d")



# --- property-based tests (hypothesis): `make fuzz` runs them with many more examples ---------

import math  # noqa: E402
import tracemalloc  # noqa: E402

from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp  # noqa: E402

from trainlab.data.idx import _DTYPES, _GZIP_RATIO, parse_idx  # noqa: E402

NATIVE = [dt.newbyteorder("=") for dt in _DTYPES.values()]
SMALL_ARRAYS = st.sampled_from(NATIVE).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6)))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    """One folder per module (hypothesis runs many examples per function call)."""
    return tmp_path_factory.mktemp("idx-fuzz")


def check_bounded(read, bound: int):
    """`read()` returns a non-empty array of at most `bound` bytes or raises a one-line
    DataError, and never allocates much more than `bound` (what the input can hold)."""
    tracemalloc.start()
    try:
        arr = read()
    except DataError as e:
        assert "\n" not in str(e)
        arr = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if arr is not None:
        assert arr.nbytes <= bound and 0 not in arr.shape
    assert peak <= 2 * bound + (2 << 20)  # 2 MiB: gzip and read buffers
    return arr


@pytest.mark.fuzz
@given(arr=SMALL_ARRAYS, gz=st.booleans())
def test_prop_round_trip(fuzz_dir, arr, gz):
    path = fuzz_dir / ("rt.gz" if gz else "rt")
    write_idx(path, arr)
    back = read_idx(path)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert back.tobytes() == arr.tobytes()  # bytes: NaN payloads compare equal too


@pytest.mark.fuzz
@given(raw=st.binary(max_size=600))
def test_prop_arbitrary_bytes(raw):
    check_bounded(lambda: parse_idx(raw, "x"), len(raw))


@pytest.mark.fuzz
@given(code=st.sampled_from(sorted(_DTYPES) + [0x00, 0x0A, 0xFF]), ndim=st.integers(0, 6),
       dims=st.lists(st.sampled_from([0, 1, 2, 3, 255, 65536, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1),
                     min_size=6, max_size=6),
       payload=st.binary(max_size=300), zeros=st.sampled_from([0, 0, 1 << 16, 4 << 20]),
       gz=st.booleans())
@example(code=0x08, ndim=4, dims=[65536] * 6, payload=b"", zeros=0, gz=False)  # 2**64 wraps to 0
@example(code=0x08, ndim=3, dims=[5, 0, 28, 0, 0, 0], payload=b"", zeros=0, gz=True)  # no values
@example(code=0x08, ndim=1, dims=[10] * 6, payload=b"", zeros=4 << 20, gz=True)  # a gzip bomb
def test_prop_random_headers(fuzz_dir, code, ndim, dims, payload, zeros, gz):
    """Headers of any size, zero or overflowing, over payloads short or long (gzip bombs):
    DataError, and memory bounded by the smaller of the declared and the real size."""
    dims = dims[:ndim]
    raw = bytes([0, 0, code, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims) + payload + bytes(zeros)
    declared = math.prod(dims) * _DTYPES[code].itemsize if code in _DTYPES else 0
    bound = min(len(raw), 4 + 4 * ndim + declared)
    if gz:
        (fuzz_dir / "h.gz").write_bytes(gzip.compress(raw, compresslevel=1))
        check_bounded(lambda: read_idx(fuzz_dir / "h.gz"), bound)
    else:
        check_bounded(lambda: parse_idx(raw, "x"), bound)


MUTATION = st.one_of(
    st.tuples(st.just("cut"), st.integers(0, 10**6)),
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 24), st.integers(0, 255)),  # mostly header bytes
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
)


def mutate(data: bytes, mutations) -> bytes:
    b = bytearray(data)
    for kind, *args in mutations:
        if not b:
            break
        if kind == "cut":
            del b[args[0] % (len(b) + 1):]
        elif kind == "flip":
            b[args[0] % len(b)] ^= 1 << args[1]
        elif kind == "set":
            b[args[0] % len(b)] = args[1]
        else:
            b += args[0]
    return bytes(b)


@pytest.mark.fuzz
@given(arr=SMALL_ARRAYS, mutations=st.lists(MUTATION, min_size=1, max_size=4),
       where=st.sampled_from(["raw", "gzip of mutated", "mutated gzip"]))
def test_prop_mutated_files(fuzz_dir, arr, mutations, where):
    """Truncations, bit flips, header edits and trailing bytes of a valid file, raw or gzipped
    (mutated before or after compressing): only ever a DataError or a bounded array."""
    good = encode_idx(arr)
    if where == "raw":
        data = mutate(good, mutations)
        bound = len(data)
    elif where == "gzip of mutated":
        inner = mutate(good, mutations)
        data, bound = gzip.compress(inner), len(inner)
    else:
        data = mutate(gzip.compress(good), mutations)
        bound = len(data) * _GZIP_RATIO
    path = fuzz_dir / ("m" if where == "raw" else "m.gz")
    path.write_bytes(data)
    check_bounded(lambda: read_idx(path), bound)


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.int64),
    np.arange(12, dtype=np.int64).astype(">i8"),
    np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    np.arange(24, dtype=np.uint8).reshape(4, 6)[:, ::2],
    np.zeros((0, 3), dtype=np.int64),
    np.int64(7),
], ids=["int64", "int64-big-endian", "float32", "uint8-strided", "empty", "0-d"])
def test_payload_hash_is_that_of_the_big_endian_bytes_whatever_the_layout(arr):
    import hashlib

    flat = np.ascontiguousarray(arr)
    expected = flat.astype(flat.dtype.newbyteorder(">")) if flat.dtype.itemsize > 1 else flat
    assert payload_sha256(arr) == hashlib.sha256(expected.tobytes()).hexdigest()
