"""Calling a model factory: the arguments it is given (trainlab's contract, or by name) and the
one size check every factory passes, built-in or not, registered or named by import path."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable

import torch
from torch import nn

from trainlab.errors import ConfigError

MAX_PARAMETERS = 10**9  # 4 GB of float32 weights, before gradients and optimizer state

# What trainlab knows of the data, under the names the common model constructors give it
# (torchvision's num_classes, timm's in_chans, many papers' in_channels / img_size).
CHANNEL_NAMES = ("in_chans", "in_channels", "input_channels", "num_channels")
SIZE_NAMES = ("img_size", "image_size", "input_size")
CONTRACT = ("trainlab calls a model factory as f(input_shape, num_classes, **kwargs), or by name with "
            "num_classes= (plus in_chans / in_channels / input_shape / img_size when it takes them)")


def call_arguments(name: str, factory, input_shape: tuple, num_classes: int, kwargs: dict) -> tuple[tuple, dict]:
    """(args, kwargs) to call `factory` with: trainlab's contract f(input_shape, num_classes,
    **kwargs) when its first parameter is input_shape (or it has no num_classes), else by name:
    num_classes and whichever of the channel / shape / size names it takes. One sentence stating
    the contract when neither fits."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C factory: the call itself checks
        return (input_shape, num_classes), kwargs
    named = [p for p in params.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    by_name = "num_classes" in {p.name for p in named} and (not named or named[0].name != "input_shape")
    if by_name:
        c, h, w = input_shape
        known = {"num_classes": num_classes, "input_shape": input_shape,
                 **{n: c for n in CHANNEL_NAMES}, **{n: h if h == w else (h, w) for n in SIZE_NAMES}}
        mapped = {k: v for k, v in known.items() if k in params}
        clash = sorted(set(mapped) & set(kwargs))
        if clash:
            raise ConfigError(f"model {name!r}: {', '.join(clash)} come(s) from the data, not from model kwargs: "
                              "leave them out")
        args, kw = (), {**mapped, **kwargs}
    else:
        args, kw = (input_shape, num_classes), kwargs
    try:
        inspect.signature(factory).bind(*args, **kw)
    except TypeError as e:
        takes = ", ".join(p.name for p in params.values()) or "nothing"
        raise ConfigError(f"model {name!r}: bad arguments {kwargs} ({e}): {CONTRACT}; it takes "
                          f"({takes})") from None
    return args, kw


def call_factory(name: str, factory, input_shape, num_classes: int, kwargs: dict) -> nn.Module:
    """The one way trainlab calls a model factory: its arguments mapped, its size checked
    before the real build, its result an nn.Module (one sentence if not)."""
    args, kw = call_arguments(name, factory, tuple(input_shape), num_classes, kwargs)
    model = _sized(lambda: factory(*args, **kw))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r}: the factory returned {type(model).__name__}, not an nn.Module")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# While a model is rebuilt from a file, the weights that file holds: a spec describing more
# parameters than that is refused before its memory is allocated (build_from_spec).
_HELD_WEIGHTS: contextvars.ContextVar[int | None] = contextvars.ContextVar("trainlab_held_weights", default=None)


@contextlib.contextmanager
def holding(weights: int | None):
    """Within: a model with more parameters than `weights` (a file's weight values) is refused."""
    token = _HELD_WEIGHTS.set(weights)
    try:
        yield
    finally:
        _HELD_WEIGHTS.reset(token)


def _sized(make: Callable[[], nn.Module]) -> nn.Module:
    """Build on the meta device (no memory) and refuse a model over MAX_PARAMETERS, so a
    width of 10**7 is an error, not a terabyte allocation; when rebuilding from a file, refuse
    one with more parameters than the file holds weights (a small forged file, a huge model).
    The real build is a second call: a meta model cannot be filled in place without losing the
    factory's own initialization and its draws from the seeded generator."""
    try:
        with torch.device("meta"):
            made = make()
            n = count_parameters(made) if isinstance(made, nn.Module) else None
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - a factory that cannot run on meta: counted once built
        model = make()
        n = count_parameters(model) if isinstance(model, nn.Module) else 0
        _refuse_size(n)
        return model
    if n is None:
        return made  # no module at all: the caller refuses it, without calling the factory again
    _refuse_size(n)
    return make()


def _refuse_size(n: int) -> None:
    if n > MAX_PARAMETERS:
        raise ConfigError(f"model kwargs give {n:,} parameters, over the limit of {MAX_PARAMETERS:,}: "
                          "use smaller widths or fewer layers")
    held = _HELD_WEIGHTS.get()
    if held is not None and n > held:
        raise ConfigError(f"its spec describes {n:,} parameters but the file holds {held:,} weight values: "
                          "the file is damaged or forged")
