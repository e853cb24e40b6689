"""The built-in architectures' checks of their kwargs: one sentence naming the kwarg and what
it may be, before anything is built (a width of 10**7 or a list of a million layers never
reaches torch)."""

from __future__ import annotations

import reprlib

from trainlab.errors import ConfigError

MAX_WIDTH = 65536  # any one layer's width or channel count
MAX_LAYERS = 64  # entries in a hidden / channels list


def check(name, value, ok, allowed):
    if not ok:  # reprlib: a list of a million widths is shown as its first few
        raise ConfigError(f"model kwarg {name} = {reprlib.repr(value)} is invalid: {allowed}")


def is_int(value, low, high) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high  # True is 1


def int_list(name, value, min_len=0) -> tuple:
    """A list of layer widths (a TOML/JSON array or a tuple): each an int, not a bool."""
    span = f"{min_len} to {MAX_LAYERS}" if min_len else f"up to {MAX_LAYERS}"
    check(name, value, isinstance(value, (list, tuple)) and min_len <= len(value) <= MAX_LAYERS
          and all(is_int(v, 1, MAX_WIDTH) for v in value), f"a list of {span} ints, each from 1 to {MAX_WIDTH}")
    return tuple(value)


def check_dropout(value):
    check("dropout", value, isinstance(value, (int, float)) and not isinstance(value, bool)
          and 0 <= value < 1, "a probability in [0, 1)")  # NaN fails the comparison
