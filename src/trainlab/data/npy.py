""".npy files from users: the header is checked before any payload is read.

np.load trusts the header: a 100-byte file declaring shape (10**9,) makes it allocate
8 GB before finding the data missing. Here the declared size must equal what the file
holds, object arrays (pickles) are refused, and the payload is read only then.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from trainlab.data.idx import MAX_PAYLOAD
from trainlab.errors import DataError


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """Read a .npy file into a read-only array, refusing headers the file cannot back."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a .npy file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot open it ({e.strerror or e}); check its permissions") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:  # 2.0 and 3.0 share the layout (3.0 only allows UTF-8 names)
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except (ValueError, EOFError, SyntaxError, TypeError) as e:
            first = str(e).splitlines()[0] if str(e) else "empty file"
            raise DataError(f"{path}: not a readable .npy array ({first})") from None
        if dtype.hasobject:
            raise DataError(f"{path}: holds Python objects (a pickle), which trainlab never loads; "
                            "save a plain numeric array")
        if any(d <= 0 for d in shape):
            raise DataError(f"{path}: header declares shape {shape}, which holds no values; "
                            "save a non-empty array")
        expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        got = size - f.tell()
        if expected > MAX_PAYLOAD or got != expected:
            why = f"more than the {MAX_PAYLOAD >> 30} GiB allowed" if expected > MAX_PAYLOAD else \
                f"but the file holds {got}"
            raise DataError(f"{path}: header declares shape {shape} of {dtype} = {expected} bytes, "
                            f"{why}; the file is damaged, replace it")
        payload = f.read(expected)
    if len(payload) != expected:
        raise DataError(f"{path}: the file shrank while being read; try again")
    return np.frombuffer(payload, dtype=dtype).reshape(shape, order="F" if fortran else "C")
