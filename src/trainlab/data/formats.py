"""Data formats: the registry of readers by scheme, and load_dataset, the one dispatch.

A data set is a catalog name (fashion-mnist, mnist) or `SCHEME:ARG`, read by the reader
registered for SCHEME. The built-in readers register themselves on import like any other:
`folder:` and `csv:` (trainlab.data.folder), `cifar10:` and `cifar100:` (cifar), `hf:` (hf);
`idx:` is registered here, since the catalog's sets are IDX folders read by the same module.
Your own format is one call, `register_format("myformat", reader)` with `reader(arg, data_dir)
-> Dataset`, in a module the command line imports by name (`--allow-import mymodule`). Nothing
here imports code: a run's stored `dataset` only names a scheme, and an unregistered one is
refused in one sentence.
"""

from __future__ import annotations

import os
import reprlib
from collections.abc import Callable

from trainlab.catalog import CATALOG, FLIP_SAFE_SCHEMES, SCHEME, problem
from trainlab.data.dataset import Dataset
from trainlab.data.idx_folder import read_catalog, read_idx_dir
from trainlab.errors import ConfigError, DataError

Reader = Callable[[str, "str | os.PathLike | None"], "Dataset"]

_READERS: dict[str, Reader] = {}
# A Dataset made in memory (from_arrays) is recorded as arrays:NAME: it cannot be reloaded.
ARRAYS = "arrays"


def register_format(scheme: str, reader: Reader | None = None, *, flips_keep_labels: bool = False):
    """Make `load_dataset("SCHEME:ARG", data_dir)` call `reader(ARG, data_dir)`, which returns a
    Dataset (e.g. from trainlab.from_arrays). A call, or a decorator: `@register_format("npz")`.
    `flips_keep_labels=True` says a mirrored image keeps its class, so recipes may flip it."""
    if not isinstance(scheme, str) or not SCHEME.fullmatch(scheme):
        raise ConfigError(f"data format scheme {reprlib.repr(scheme)} is invalid: use a letter, then up "
                          "to 49 letters, digits or _ + . -")
    if scheme == ARRAYS:
        raise ConfigError(f"data format scheme {ARRAYS!r} is reserved: it marks data given in memory "
                          "(trainlab.from_arrays); choose another name")

    def deco(reader):
        if not callable(reader):
            raise ConfigError(f"data format {scheme!r}: the reader {reprlib.repr(reader)} is not callable")
        known = _READERS.get(scheme)
        if known is not None and known is not reader:
            raise ConfigError(f"data format {scheme!r} is already registered (by "
                              f"{getattr(known, '__module__', '?')}) with another reader: choose another scheme")
        _READERS[scheme] = reader
        if flips_keep_labels is True:
            FLIP_SAFE_SCHEMES.add(scheme)
        return reader
    return deco if reader is None else deco(reader)


def schemes() -> list[str]:
    """The registered data format schemes."""
    return sorted(_READERS)


def reader(spec: str) -> Reader:
    """The reader registered for the scheme of `spec` (SCHEME:ARG); one sentence if none is."""
    scheme = spec.partition(":")[0]
    if scheme == ARRAYS:
        raise ConfigError(f"dataset {reprlib.repr(spec)} was given in memory (trainlab.from_arrays), so it "
                          "cannot be reloaded by name, nor from the command line: pass that data again "
                          "from Python with data=...")
    if scheme not in _READERS:
        raise ConfigError(f"dataset {reprlib.repr(spec)}: no data format {scheme!r} is registered in this process (registered: "
                          f"{', '.join(schemes()) or 'none'}): a format is registered with "
                          "trainlab.data.register_format, and from the command line by naming the "
                          "module that registers it with --allow-import MODULE")
    return _READERS[scheme]


def load_dataset(spec: str = "fashion-mnist", data_dir: str | os.PathLike | None = None,
                 **options) -> Dataset:
    """A catalog data set by name (found via trainlab.data.sources), or `SCHEME:ARG` read by the
    format registered for SCHEME (built in: `idx:DIR`, `folder:DIR`, `cifar10:DIR`,
    `cifar100:DIR`); `data_dir` is for the readers that use it, `options` (image_size,
    skip_bad, seed: see data_options) go to the readers that list them. The Dataset's `spec`
    is the string that loads it again."""
    if spec in CATALOG:
        return read_catalog(CATALOG[spec], data_dir)
    why = problem(spec) if isinstance(spec, str) else "name it by a string"
    if why:
        raise ConfigError(f"unknown dataset {reprlib.repr(spec)}: {why}")
    scheme, _, arg = spec.partition(":")
    read = reader(spec)
    accepted = getattr(read, "options", ())
    ds = read(arg, data_dir, **{k: v for k, v in options.items() if k in accepted and v is not None})
    if not isinstance(ds, Dataset):
        raise DataError(f"dataset {spec!r}: the {scheme!r} reader returned {type(ds).__name__}, not a "
                        "trainlab Dataset (make one with trainlab.from_arrays)")
    if ds.spec is None:
        ds.spec = spec
    return ds


register_format("idx", read_idx_dir)
