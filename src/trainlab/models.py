"""The model registry: a spec (name + kwargs) -> nn.Module.

"Architecture in code, values in file": checkpoints store the spec, never a pickled module.
A released name's architecture never changes, so old checkpoints keep loading; a new design
gets a new name. Every factory takes the data's `input_shape` (C, H, W) and `num_classes`.

Your own model: register a factory with `@register("name")` (with what trainlab should pick
for it: its recipe, channels_last, CPU bf16), or name it by import path for training
(`--model mypkg.nets:make_net`, which gets the defaults). Loading a file resolves only
registered names; an import path stored in a file is imported only if the user allows that
module explicitly, so a file can never make trainlab import or call arbitrary code.
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
import os
import re
import reprlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
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


def available() -> list[str]:
    return sorted(_REGISTRY)


_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def _import(module_name: str):
    """Import a module the user named, also from the current folder: `python -m trainlab`
    finds mymod.py there, and the installed `trainlab` command should too."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        top = module_name.split(".")[0]
        here = Path.cwd()
        if e.name != top or not ((here / f"{top}.py").is_file() or (here / top / "__init__.py").is_file()):
            raise
        if str(here) not in sys.path:
            sys.path.insert(0, str(here))
        return importlib.import_module(module_name)


ALLOW_ENV = "TRAINLAB_ALLOW_IMPORT"


class AllowListError(ConfigError):
    """The user's own allow-list is wrong: theirs to fix, never blamed on a file."""


class GivenModelError(ConfigError):
    """A run trained on a model given in memory, asked for without it: the caller's to give."""
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def allow_list_file() -> Path:
    """$XDG_CONFIG_HOME/trainlab/allow-import (default ~/.config/...): a relative XDG_CONFIG_HOME
    is ignored, as the XDG spec says."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "trainlab" / "allow-import"


def user_allowed() -> tuple[str, ...]:
    """The modules the user trusts on every command (so a run trained on `mynets:Net` is resumed,
    evaluated and exported without naming it each time): TRAINLAB_ALLOW_IMPORT (comma-separated)
    and one module a line in allow_list_file(). Only the user's own environment and config folder
    can say this, never a file in a run or data folder."""
    names = [n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",")]
    where = {n: ALLOW_ENV for n in names if n}
    path = allow_list_file()
    try:
        if path.is_file() and path.stat().st_size <= 64 * 1024:
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    where.setdefault(line, str(path))
    except OSError:
        pass
    for name, source in where.items():
        if not _MODULE.fullmatch(name):
            raise AllowListError(f"{source} names {reprlib.repr(name)}, which is not a module name: list modules "
                              "such as mypkg.nets, one a line (or comma-separated in the variable)")
    return tuple(where)


INSTANCE = "instance"  # the spec of a model given to train() in memory: only model= rebuilds it


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
    if module and module != "__main__" and qualname.isidentifier() and _IMPORT_PATH.fullmatch(f"{module}:{qualname}"):
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
    args, kw = call_arguments(name, given, tuple(input_shape), num_classes, kwargs)
    model = _sized(lambda: given(*args, **kw))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r}: the factory returned {type(model).__name__}, not an nn.Module")
    return model


def _resolve_factory(name: str, allow_import: tuple[str, ...] | None) -> Callable[..., nn.Module]:
    if name.startswith(f"{INSTANCE}:"):
        raise GivenModelError(f"model {name!r} was given in memory (train(model=...)): no file can rebuild it; pass "
                          "the same model again with model= (trainlab.evaluate_run, load_model and resume take "
                          "it), or train on a registered model or an importable module:function")
    if name in _REGISTRY:
        return _REGISTRY[name].factory
    if ":" in name:
        if not _IMPORT_PATH.fullmatch(name):
            raise ConfigError(f"model {name!r} is not a valid import path: write module:function, "
                              "e.g. mypkg.nets:make_net")
        module_name, _, attr = name.partition(":")
        if allow_import is not None and module_name not in allow_import and module_name not in user_allowed():
            raise ConfigError(f"model {name!r} needs importing {module_name!r}, which a stored spec "
                              f"may not do by itself: pass --allow-import {module_name} if you trust "
                              f"that module (or list it in {ALLOW_ENV} or {allow_list_file()} to trust it "
                              "on every command)")
        try:
            module = _import(module_name)
        except ImportError as e:
            raise ConfigError(f"model {name!r}: cannot import {module_name!r} ({e}); run from the "
                              "folder that holds it or put it on PYTHONPATH") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ConfigError(f"model {name!r}: {module_name} has no callable {attr!r}")
        return factory
    raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(available())}, "
                      "or name your own factory as module:function")


MAX_INPUT = 1 << 26  # C*H*W of one image: 8192x8192 RGB is already beyond this pipeline
MAX_CLASSES = 1_000_000


def check_spec(spec, source: str = "the file") -> dict:
    """A stored model spec, checked before anything is built from it (one sentence if bad)."""
    from trainlab.errors import TrainlabError

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
    from trainlab.errors import TrainlabError

    check_spec(spec, source)
    name = spec["name"]
    if model is not None:  # the caller's own model (train(model=...) runs): theirs, checked against the weights
        return build_given(model, name, spec["input_shape"], spec["num_classes"], **spec.get("kwargs", {}))
    if ":" not in name and name not in _REGISTRY:  # registered by a module the user trusts everywhere?
        for module in user_allowed():
            try:
                _import(module)
            except ImportError as e:
                raise AllowListError(f"{module!r}, trusted in {ALLOW_ENV} or {allow_list_file()}, cannot be "
                                  f"imported ({e}): fix the name or put it on PYTHONPATH") from None
    if ":" not in name and name not in _REGISTRY:  # e.g. registered by a module of the user's
        raise ConfigError(f"{source}: its model {name!r} is not registered in this process: name the "
                          "module that registers it with --allow-import MODULE (from Python, import "
                          "that module first)")
    held = None if weights is None else sum(t.numel() for t in weights.values() if torch.is_tensor(t))
    token = _HELD_WEIGHTS.set(held)
    try:
        return build(spec["name"], spec["input_shape"], spec["num_classes"],
                     allow_import=tuple(allow_import or ()), **spec.get("kwargs", {}))
    except ConfigError as e:
        if "--allow-import" in str(e) or isinstance(e, (AllowListError, GivenModelError)):
            raise  # the user can act on this one: a usage error
        raise TrainlabError(f"{source}: its model cannot be built ({e})") from None
    except (TypeError, ValueError, RuntimeError, MemoryError, OverflowError) as e:  # a factory's own failure
        raise TrainlabError(f"{source}: its model cannot be built ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        _HELD_WEIGHTS.reset(token)


def build(name: str, input_shape=(1, 28, 28), num_classes: int = 10, *,
          allow_import: tuple[str, ...] | None = None, **kwargs) -> nn.Module:
    """Build a model from its spec. `allow_import=None` (training from your own command line)
    imports `module:function` names freely; loading from a file passes the allowed modules."""
    factory = _resolve_factory(name, allow_import)
    args, kw = call_arguments(name, factory, tuple(input_shape), num_classes, kwargs)
    # the built-ins size themselves on the meta device; anyone else's factory gets the same check
    builtin = getattr(factory, "__module__", None) == __name__
    model = factory(*args, **kw) if builtin else _sized(lambda: factory(*args, **kw))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r}: the factory returned {type(model).__name__}, not an nn.Module")
    return model


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


MAX_WIDTH = 65536  # any one layer's width or channel count
MAX_LAYERS = 64  # entries in a hidden / channels list
MAX_PARAMETERS = 10**9  # 4 GB of float32 weights, before gradients and optimizer state


def _check(name, value, ok, allowed):
    if not ok:  # reprlib: a list of a million widths is shown as its first few
        raise ConfigError(f"model kwarg {name} = {reprlib.repr(value)} is invalid: {allowed}")


def _is_int(value, low, high) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high  # True is 1


def _int_list(name, value, min_len=0) -> tuple:
    """A list of layer widths (a TOML/JSON array or a tuple): each an int, not a bool."""
    span = f"{min_len} to {MAX_LAYERS}" if min_len else f"up to {MAX_LAYERS}"
    _check(name, value, isinstance(value, (list, tuple)) and min_len <= len(value) <= MAX_LAYERS
           and all(_is_int(v, 1, MAX_WIDTH) for v in value), f"a list of {span} ints, each from 1 to {MAX_WIDTH}")
    return tuple(value)


def _dropout(value):
    _check("dropout", value, isinstance(value, (int, float)) and not isinstance(value, bool)
           and 0 <= value < 1, "a probability in [0, 1)")  # NaN fails the comparison


# While a model is rebuilt from a file, the weights that file holds: a spec describing more
# parameters than that is refused before its memory is allocated (build_from_spec).
_HELD_WEIGHTS: contextvars.ContextVar[int | None] = contextvars.ContextVar("trainlab_held_weights", default=None)


def _sized(make: Callable[[], nn.Module]) -> nn.Module:
    """Build on the meta device (no memory) and refuse a model over MAX_PARAMETERS, so a
    width of 10**7 is an error, not a terabyte allocation; when rebuilding from a file, refuse
    one with more parameters than the file holds weights (a small forged file, a huge model)."""
    try:
        with torch.device("meta"):
            n = count_parameters(make())
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - a user's factory that cannot run on meta: counted once built
        model = make()
        n = count_parameters(model) if isinstance(model, nn.Module) else 0
        _refuse_size(n)
        return model
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


# ---------------------------------------------------------------- released architectures
# cpu_bf16: CPU bf16 autocast measured faster at equal accuracy (benchmarks/RESULTS.md; 2-core
# EPYC with avx512_bf16, torch 2.13): step time 1.5-2.9x shorter. Final accuracy, same
# schedule, bf16 vs fp32: mlp test 90.37 vs 90.50 (seeds 0-2, bs 512, 10 epochs; val 90.33 vs
# 90.33; at equal *time* bf16 trains twice the epochs and wins), mlp-reg 90.59 vs 90.60 (seeds
# 0-2), cnn-fast 93.16 vs 93.20 (seed 0), cnn val 93.21 vs 93.23 / test 93.38 vs 93.48 (seeds
# 0-2, 10 epochs, 1.5x faster: 52.9 vs 79.0 s). resnet: not measured, so float32.
# recipe: the preset measured best for the model (see trainlab.recipes); conv: channels_last.

@register("mlp", cpu_bf16=True)
def mlp(input_shape, num_classes, hidden=(256, 128)):
    """784-256-128-10 with ReLU: the plain baseline."""
    hidden = _int_list("hidden", hidden)
    features = int(torch.tensor(input_shape).prod())  # not inside make: meta tensors have no value

    def make():
        layers: list[nn.Module] = [nn.Flatten()]
        width = features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)
    return _sized(make)


@register("mlp-reg", cpu_bf16=True)
def mlp_reg(input_shape, num_classes, hidden=(512, 256), dropout=0.3):
    """784-512-256-10; each hidden block Linear -> BatchNorm1d -> ReLU -> Dropout."""
    hidden = _int_list("hidden", hidden)
    _dropout(dropout)
    features = int(torch.tensor(input_shape).prod())  # not inside make: meta tensors have no value

    def make():
        layers: list[nn.Module] = [nn.Flatten()]
        width = features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)
    return _sized(make)


@register("cnn", recipe="fast-cnn", conv=True, cpu_bf16=True)
def cnn(input_shape, num_classes, channels=(32, 64), fc=128, dropout=0.3):
    """conv(32,3)-BN-ReLU-maxpool, conv(64,3)-BN-ReLU-maxpool, FC 128, Dropout, FC."""
    channels = _int_list("channels", channels)
    _check("fc", fc, _is_int(fc, 1, MAX_WIDTH), f"an int from 1 to {MAX_WIDTH}")
    _dropout(dropout)
    _, h, w = input_shape
    _check("channels", channels, h >> len(channels) > 0 and w >> len(channels) > 0,
           f"too many pooling stages for {input_shape}")

    def make():
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        layers += [nn.Flatten(), nn.Linear(c * h * w, fc), nn.ReLU(), nn.Dropout(dropout),
                   nn.Linear(fc, num_classes)]
        return nn.Sequential(*layers)
    return _sized(make)


# ---------------------------------------------------------------- the speed / accuracy ladder

@register("cnn-fast", recipe="fast-cnn", conv=True, cpu_bf16=True)
def cnn_fast(input_shape, num_classes, channels=(16, 32, 64), fc=128, dropout=0.2):
    """A CNN designed for CPU speed: three 3x3 conv-BN-ReLU blocks (16/32/64), a 2x2 max-pool
    after each of the first two (28 -> 14 -> 7), then FC `fc` (0: none), Dropout, FC.

    Narrow early layers keep the full-resolution activations (the memory-bound part of a
    CPU step) small: 2.3M multiply-adds per image against `cnn`'s 4.2M, and half its
    full-resolution activation memory, at higher accuracy (benchmarks/RESULTS.md)."""
    channels = _int_list("channels", channels, min_len=1)
    _check("fc", fc, _is_int(fc, 0, MAX_WIDTH), f"0 (no hidden FC layer) or an int up to {MAX_WIDTH}")
    _dropout(dropout)
    _, h, w = input_shape
    pools = len(channels) - 1  # between blocks, not after the last one
    _check("channels", channels, h >> pools > 0 and w >> pools > 0, f"too many pooling stages for {input_shape}")

    def make():
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for i, out in enumerate(channels):
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
            if i < pools:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        layers.append(nn.Flatten())
        if fc:
            layers += [nn.Linear(c * h * w, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
                       nn.Linear(fc, num_classes)]
        else:
            layers += [nn.Dropout(dropout), nn.Linear(c * h * w, num_classes)]
        return nn.Sequential(*layers)
    return _sized(make)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity (or 1x1 strided conv) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        # the projection shortcut takes the pre-activated input (He et al. 2016, pre-act)
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.drop(torch.relu(self.bn2(out))))
        return out + short


class PreActResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...], depth: int,
                 dropout: float):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            for b in range(depth):
                blocks.append(PreActBlock(cin, cout, 2 if (stage > 0 and b == 0) else 1, dropout))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = torch.relu(self.bn(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@register("resnet", recipe="resnet", conv=True)
def resnet(input_shape, num_classes, width=64, depth=2, stages=3, dropout=0.0):
    """A pre-activation ResNet for small images (28x28 / 32x32): a 3x3 stem, `stages` stages
    of `depth` pre-activation blocks with widths width, 2*width, 4*width (stride 2 between
    stages: 28 -> 14 -> 7), global average pooling, FC. The defaults (width 64, depth 2:
    14 weight layers, 2.8M parameters) are for the top of the ladder on a GPU; on a CPU use
    e.g. width=32 (a quarter of the compute)."""
    for name, value, high in (("width", width, MAX_WIDTH), ("depth", depth, 256), ("stages", stages, 16)):
        _check(name, value, _is_int(value, 1, high), f"an int from 1 to {high}")
    _dropout(dropout)
    c, h, w = input_shape
    _check("stages", stages, min(h, w) // 2 ** (stages - 1) >= 1,
           f"too many stride-2 stages for {input_shape}")
    widths = tuple(width * 2 ** i for i in range(stages))
    return _sized(lambda: PreActResNet(c, num_classes, widths, depth, dropout))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
