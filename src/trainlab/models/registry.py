"""The model registry: a name -> its factory and what trainlab picks for it by default.

A released name's architecture never changes, so old checkpoints keep loading; a new design
gets a new name. Every factory takes the data's `input_shape` (C, H, W) and `num_classes`.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from trainlab.errors import ConfigError
from trainlab.recipes import PRESETS


@dataclass(frozen=True)
class ModelInfo:
    """A model's factory and what trainlab picks for it by default, kept in one place so a
    user's model gets the same treatment as a built-in one."""
    name: str
    factory: Callable[..., nn.Module] | None = None  # None: not registered (an import path)
    recipe: str | None = None  # the preset `--recipe auto` picks; None: recipes.DEFAULT_RECIPE
    conv: bool = False  # convolutional: channels_last by default (measured 1.4x on the CPU)
    cpu_bf16: bool = False  # precision auto picks bf16 on a fast-bf16 CPU (measured faster)


_REGISTRY: dict[str, ModelInfo] = {}
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}")  # no ':', which marks an import path

def _check_recipe(name: str, recipe) -> None:
    if recipe is None or (isinstance(recipe, str) and recipe in PRESETS):
        return
    raise ConfigError(f"model {name!r}: recipe {reprlib.repr(recipe)} is not a known preset: choose one of "
                      f"{', '.join(PRESETS)} (or leave it out for the default)")


def register(name: str, factory: Callable[..., nn.Module] | None = None, *, recipe: str | None = None,
             conv: bool = False, cpu_bf16: bool = False):
    """Make `factory(input_shape, num_classes, **kwargs) -> nn.Module` buildable by name, with
    its defaults: `recipe` (a preset name) for `--recipe auto`, `conv` for channels_last,
    `cpu_bf16` for precision auto on a CPU. A decorator (`@register("name", conv=True)`) or a
    call (`register("name", factory)`)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"model name {reprlib.repr(name)} is invalid: use up to 100 letters, digits "
                          "and _ . + - (no ':', which marks an import path module:function)")
    _check_recipe(name, recipe)
    for flag, value in (("conv", conv), ("cpu_bf16", cpu_bf16)):
        if not isinstance(value, bool):
            raise ConfigError(f"model {name!r}: {flag} = {reprlib.repr(value)} is invalid: use True or False")

    def deco(factory):
        if not callable(factory):
            raise ConfigError(f"model {name!r}: the factory {reprlib.repr(factory)} is not callable")
        entry = ModelInfo(name, factory, recipe, conv, cpu_bf16)
        known = _REGISTRY.get(name)
        if known is not None and known != entry:
            what = "another factory" if known.factory is not factory else "other settings"
            raise ConfigError(f"model name {name!r} is already registered (by "
                              f"{getattr(known.factory, '__module__', '?')}) with {what}: choose another name")
        _REGISTRY[name] = entry
        return factory
    return deco if factory is None else deco(factory)


def info(name: str) -> ModelInfo:
    """What is registered for `name`; the defaults for an import path or an unknown name
    (which fails when it is built)."""
    return _REGISTRY.get(name) or ModelInfo(name)


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def available() -> list[str]:
    return sorted(_REGISTRY)
