"""From a model spec (name + kwargs + the data's input shape and class count) to a module.

"Architecture in code, values in file": checkpoints store the spec, never a pickled module.
`build` is the way from your own command line or code; `build_from_spec` the one trust-checked
way from a stored spec (checked against its schema first); `build_given` a model given in
memory to train(model=...), which a file can only name (instance:NAME), never rebuild.
"""

from __future__ import annotations

import importlib
import re
import reprlib
from collections.abc import Callable

import torch
from torch import nn

from trainlab.errors import ConfigError, TrainlabError
from trainlab.models.factory import call_factory, holding
from trainlab.models.registry import is_registered
from trainlab.models.resolve import (
    IMPORT_PATH,
    INSTANCE,
    AllowListError,
    GivenModelError,
    import_user_allowed,
    resolve_factory,
)

MAX_INPUT = 1 << 26  # C*H*W of one image: 8192x8192 RGB is already beyond this pipeline
MAX_CLASSES = 1_000_000


def given_model(model) -> tuple[str, nn.Module | Callable | None]:
    """train(model=...): the name the run records, and what to build from (None: the name alone
    rebuilds it). A class or function importable by its module and name is recorded as
    module:function (resume, evaluate, export rebuild it, the module allowed); an nn.Module
    instance, a lambda or a local function as instance:NAME, which only model= can rebuild."""
    if isinstance(model, nn.Module):
        return f"{INSTANCE}:{_identifier(type(model).__name__)}", model
    if not callable(model):
        raise ConfigError(f"model = {reprlib.repr(model)} is invalid: give an nn.Module, or a class or function "
                          "that returns one")
    module, qualname = getattr(model, "__module__", None), getattr(model, "__qualname__", "")
    if module and module != "__main__" and qualname.isidentifier() and IMPORT_PATH.fullmatch(f"{module}:{qualname}"):
        try:
            if getattr(importlib.import_module(module), qualname) is model:
                return f"{module}:{qualname}", None
        except (ImportError, AttributeError):
            pass
    return f"{INSTANCE}:{_identifier(getattr(model, '__name__', 'model'))}", model


def _identifier(text: str) -> str:
    name = re.sub(r"\W", "_", text)[:60] or "model"
    return name if name.isidentifier() else f"m_{name}"


def build_given(given, name: str, input_shape, num_classes: int, **kwargs) -> nn.Module:
    """The model of a run given in memory: the instance itself, or the factory called as any is."""
    if isinstance(given, nn.Module):
        if kwargs:
            raise ConfigError(f"model kwargs {kwargs} are for a factory: an nn.Module instance is already built")
        return given
    return call_factory(name, given, input_shape, num_classes, kwargs)


def build(name: str, input_shape=(1, 28, 28), num_classes: int = 10, *,
          allow_import: tuple[str, ...] | None = None, **kwargs) -> nn.Module:
    """Build a model from its spec. `allow_import=None` (training from your own command line)
    imports `module:function` names freely; loading from a file passes the allowed modules."""
    return call_factory(name, resolve_factory(name, allow_import), input_shape, num_classes, kwargs)


def check_spec(spec, source: str = "the file") -> dict:
    """A stored model spec, checked before anything is built from it (one sentence if bad)."""
    def bad(what):
        raise TrainlabError(f"{source}: its model spec {what}: the file is damaged or forged")

    if not isinstance(spec, dict):
        bad("is missing or not a table")
    if not isinstance(spec.get("name"), str) or not 0 < len(spec["name"]) <= 200:
        bad("has no model name")
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        bad("has model arguments that are not a table of names")
    shape = spec.get("input_shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
            or shape[0] * shape[1] * shape[2] > MAX_INPUT):
        bad(f"has an invalid input shape {shape!r} (expected [C, H, W], positive, at most {MAX_INPUT:,} values)")
    n = spec.get("num_classes")
    if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_CLASSES):
        bad(f"has an invalid class count {n!r}")
    return spec


def build_from_spec(spec: dict, allow_import: tuple[str, ...] = (), source: str = "the file",
                    weights: dict | None = None, model=None) -> nn.Module:
    """The one trust-checked way from a stored spec (checkpoint, config.toml, run folder) to
    a model: registered names only, plus the modules the user allows by name. Every path
    that reads a spec from disk (resume, restart, evaluate, predict, export, report,
    inspect, load_model) goes through here, so no file can make trainlab import code."""
    check_spec(spec, source)
    name = spec["name"]
    if model is not None:  # the caller's own model (train(model=...) runs): theirs, checked against the weights
        return build_given(model, name, spec["input_shape"], spec["num_classes"], **spec.get("kwargs", {}))
    if ":" not in name and not is_registered(name):  # registered by a module the user trusts everywhere?
        import_user_allowed()
    if ":" not in name and not is_registered(name):  # e.g. registered by a module of the user's
        raise ConfigError(f"{source}: its model {name!r} is not registered in this process: name the "
                          "module that registers it with --allow-import MODULE (from Python, import "
                          "that module first)")
    held = None if weights is None else sum(t.numel() for t in weights.values() if torch.is_tensor(t))
    try:
        with holding(held):
            return build(spec["name"], spec["input_shape"], spec["num_classes"],
                         allow_import=tuple(allow_import or ()), **spec.get("kwargs", {}))
    except ConfigError as e:
        if "--allow-import" in str(e) or isinstance(e, (AllowListError, GivenModelError)):
            raise  # the user can act on this one: a usage error
        raise TrainlabError(f"{source}: its model cannot be built ({e})") from None
    except (TypeError, ValueError, RuntimeError, MemoryError, OverflowError) as e:  # a factory's own failure
        raise TrainlabError(f"{source}: its model cannot be built ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
