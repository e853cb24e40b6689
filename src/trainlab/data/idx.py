"""IDX files (the MNIST format): strict reading and writing.

Layout: two zero bytes, a type code, the number of dimensions, then one big-endian
uint32 per dimension, then the payload in C order. Files may be gzipped. Every check
names the file and what is wrong, because a truncated download is the common case.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from trainlab.errors import DataError
from trainlab.store.atomic import atomic_write_bytes

# type code -> numpy dtype (big-endian where it matters)
_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("=") if dt.itemsize > 1 else dt: code for code, dt in _DTYPES.items()}


# Bounds that keep memory proportional to the input: a damaged or hostile header must not
# make the reader allocate what the file does not hold.
MAX_PAYLOAD = 4 << 30  # bytes; 85x Fashion-MNIST's training images
_GZIP_RATIO = 1032  # deflate's best ratio: n gzip bytes inflate to at most ~1032 n


def _check_header(f: BinaryIO, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Read and check the header from `f`; returns (shape, dtype, header length)."""
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(head)} bytes)")
    if head[0] != 0 or head[1] != 0:
        raise DataError(f"{name}: not an IDX file (bad magic number 0x{head.hex()})")
    code, ndim = head[2], head[3]
    if code not in _DTYPES:
        raise DataError(f"{name}: unknown IDX data type 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares zero dimensions")
    header = 4 + 4 * ndim
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{name}: header truncated (needs {header} bytes, file has {4 + len(dims)})")
    shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
    if 0 in shape:
        raise DataError(f"{name}: header declares shape {shape}, which holds no values; "
                        "the file is damaged or empty, replace it")
    return shape, _DTYPES[code], header


def _read_up_to(f: BinaryIO, n: int) -> bytearray:
    """Up to `n` bytes, in chunks: memory grows with what the stream really holds, not with
    what the header claims (f.read(n) allocates n at once, and about 3n for gzip)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(1 << 18, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _parse_stream(f: BinaryIO, name: str, size: int, gz: bool) -> np.ndarray:
    """Read one IDX array from `f`, header first, so that memory stays bounded by `size`:
    the file's length, or for gzip the compressed length (which bounds what it inflates to)."""
    shape, dtype, header = _check_header(f, name)
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if expected > MAX_PAYLOAD:
        raise DataError(f"{name}: header declares shape {shape} = {expected} bytes, more than the "
                        f"{MAX_PAYLOAD >> 30} GiB an IDX file may hold; the header is damaged, "
                        "replace the file")
    if gz and expected > size * _GZIP_RATIO:
        raise DataError(f"{name}: header declares shape {shape} = {expected} bytes, more than a "
                        f"{size}-byte gzip file can inflate to; the file is damaged, replace it")
    if gz:
        payload = _read_up_to(f, expected + 1)  # one byte more tells trailing bytes apart
        got = len(payload)
    else:
        got = size - header  # known before reading: nothing is read for a wrong size
        payload = _read_up_to(f, expected) if got == expected else b""
    if got != expected or len(payload) != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        held = "more" if gz and got > expected else str(got)
        raise DataError(f"{name}: payload {what}: header says shape {shape} = {expected} bytes, "
                        f"file holds {held}; the file is damaged, replace it")
    arr = np.frombuffer(payload, dtype=dtype).reshape(shape)
    if dtype.itemsize > 1:
        return arr.astype(dtype.newbyteorder("="))
    arr.flags.writeable = False  # a view of the file's bytes, as documented
    return arr


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes (not gzipped) into an array, checking the header against the payload size."""
    return _parse_stream(io.BytesIO(raw), name, len(raw), gz=False)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a read-only numpy array.

    The header is read and checked first, so memory stays bounded by what the file holds."""
    path = Path(path)
    try:
        if path.is_dir():
            raise DataError(f"{path}: is a folder, expected an IDX file")
        if path.exists() and not path.is_file():  # a pipe or device: no size to check against
            raise DataError(f"{path}: not a regular file, expected an IDX file")
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot open it ({e.strerror or e}); check its permissions") from None
    with f:
        st = os.fstat(f.fileno())
        try:
            if f.read(2) != b"\x1f\x8b":
                f.seek(0)
                return _parse_stream(f, str(path), st.st_size, gz=False)
            f.seek(0)
            with gzip.GzipFile(fileobj=f, mode="rb") as z:
                return _parse_stream(z, str(path), st.st_size, gz=True)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise DataError(f"{path}: the gzip stream is corrupt or truncated ({e}); "
                            "delete the file and download it again") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None


def encode_idx(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr)
    key = arr.dtype.newbyteorder("=") if arr.dtype.itemsize > 1 else arr.dtype
    if key not in _CODES:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}")
    code = _CODES[key]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(_DTYPES[code], copy=False).tobytes()


def write_idx(path: str | os.PathLike, arr: np.ndarray, compress: bool | None = None) -> None:
    """Write `arr` as IDX; gzipped (mtime 0, level 9) when the name ends in .gz."""
    path = Path(path)
    data = encode_idx(arr)
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        data = gzip.compress(data, compresslevel=9, mtime=0)
    atomic_write_bytes(path, data)


def payload_sha256(arr: np.ndarray) -> str:
    """Content hash of the decoded payload: the bytes after the IDX header.

    Independent of gzip, so the same data downloaded or converted hashes the same. Numeric
    arrays: the bytes are hashed in place (no copy when the array is already contiguous and
    big-endian or one byte wide, as IDX data and images are).
    """
    arr = np.ascontiguousarray(arr)
    if arr.dtype.itemsize > 1:
        arr = arr.astype(arr.dtype.newbyteorder(">"), copy=False)
    return hashlib.sha256(memoryview(arr.reshape(-1)).cast("B")).hexdigest()
