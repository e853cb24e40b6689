"""From a model name to its factory, trust-checked: a registered name, or `module:function`,
whose module is imported freely from the user's own command line but, when the name comes
from a file, only if the user allows that module (--allow-import, TRAINLAB_ALLOW_IMPORT or the
allow-list file). So a file can never make trainlab import or call arbitrary code."""

from __future__ import annotations

import importlib
import os
import re
import reprlib
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from trainlab.errors import ConfigError
from trainlab.models.registry import available, info, is_registered

IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
ALLOW_ENV = "TRAINLAB_ALLOW_IMPORT"
INSTANCE = "instance"  # the spec of a model given to train() in memory: only model= rebuilds it


class AllowListError(ConfigError):
    """The user's own allow-list is wrong: theirs to fix, never blamed on a file."""


class GivenModelError(ConfigError):
    """A run trained on a model given in memory, asked for without it: the caller's to give."""


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


def import_user_allowed() -> None:
    """Import every module the user trusts everywhere: they may register models (or formats)."""
    for module in user_allowed():
        try:
            _import(module)
        except ImportError as e:
            raise AllowListError(f"{module!r}, trusted in {ALLOW_ENV} or {allow_list_file()}, cannot be "
                              f"imported ({e}): fix the name or put it on PYTHONPATH") from None


def resolve_factory(name: str, allow_import: tuple[str, ...] | None) -> Callable[..., nn.Module]:
    """The factory `name` stands for. `allow_import=None`: the user's own command line, which
    may import any module; else only the modules allowed there or by the user's allow-list."""
    if name.startswith(f"{INSTANCE}:"):
        raise GivenModelError(f"model {name!r} was given in memory (train(model=...)): no file can rebuild it; pass "
                          "the same model again with model= (trainlab.evaluate_run, load_model and resume take "
                          "it), or train on a registered model or an importable module:function")
    if is_registered(name):
        return info(name).factory
    if ":" in name:
        if not IMPORT_PATH.fullmatch(name):
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
