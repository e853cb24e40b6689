"""IDX files (the MNIST format): strict reading and writing.

Layout: two zero bytes, a type code, the number of dimensions, then one big-endian
uint32 per dimension, then the payload in C order. Files may be gzipped. Every check
names the file and what is wrong, because a truncated download is the common case.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

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


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                try:
                    return gzip.decompress(f.read())
                except (OSError, EOFError, zlib.error) as e:
                    raise DataError(f"{path}: the gzip stream is corrupt or truncated ({e}); "
                                    "delete the file and download it again") from None
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an IDX file") from None


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array, checking the header against the payload size."""
    if len(raw) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{name}: not an IDX file (bad magic number 0x{raw[:4].hex()})")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise DataError(f"{name}: unknown IDX data type 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares zero dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: header truncated (needs {header} bytes, file has {len(raw)})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise DataError(f"{name}: payload {what}: header says shape {shape} = {expected} bytes, "
                        f"file holds {got}; the file is damaged, replace it")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else arr


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a read-only numpy array."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


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
    path.write_bytes(data)


def payload_sha256(arr: np.ndarray) -> str:
    """Content hash of the decoded payload: the bytes after the IDX header.

    Independent of gzip, so the same data downloaded or converted hashes the same.
    """
    arr = np.ascontiguousarray(arr)
    if arr.dtype.itemsize > 1:
        arr = arr.astype(arr.dtype.newbyteorder(">"))
    return hashlib.sha256(arr.tobytes()).hexdigest()
