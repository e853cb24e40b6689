"""A sweep's search space: a --config file with a [space] table, checked before trial 0.

Each key of [space] is a config or recipe key, or model_kwargs.NAME, mapped to one of

    { low = 1e-4, high = 1e-2, log = true }    a float (log-uniform with log = true)
    { low = 32, high = 256, step = 32 }        an integer (an integer key: step 1 by default)
    { choices = ["adam", "sgd"] }              a choice

A range must match its key's type (an integer key takes integer ends), and values across each
range, and a few draws of all the keys together, must be valid configs: a space that would
fail at trial 7 fails now, in one sentence naming the key.
"""

from __future__ import annotations

import math
import random
import typing
from dataclasses import dataclass
from pathlib import Path

from trainlab.config import RUN_FIELDS, _hint, load_toml, resolve
from trainlab.errors import ConfigError
from trainlab.recipes import RECIPE_FIELDS

NOT_SWEPT = {"name", "runs_dir", "rerun", "quiet", "tensorboard", "data_dir", "device", "threads", "dataset",
             "monitor", "mode", "init_from"}  # where a run goes or what it is judged by: fixed per sweep
MAX_CHOICES = 100


@dataclass
class Space:
    fixed: dict  # config values every trial shares
    params: dict  # name -> {"low", "high", "log"} | {"low", "high", "log", "step"} | {"choices"}
    source: str


def load_space(path: str | Path) -> Space:
    """Read and check a space file; every problem is one sentence naming the key."""
    raw = load_toml(path)
    space = raw.pop("space", None)
    where = str(path)
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where} has no [space] table: add one, e.g. [space] lr = {{ low = 1e-4, high = 1e-2, "
                          "log = true }")
    nested = space.get("model_kwargs")
    if isinstance(nested, dict):  # model_kwargs.NAME unquoted: TOML reads it as a table of tables
        space = {**{k: v for k, v in space.items() if k != "model_kwargs"},
                 **{f"model_kwargs.{k}": v for k, v in nested.items()}}
    resolve(raw, origin=where)  # the fixed part alone is a valid config
    params = {name: _param(name, spec, raw, where) for name, spec in space.items()}
    _check_draws(raw, params, where)
    return Space(raw, params, where)


def _kind(name: str) -> set:
    """The number types a key takes ({int}, {float}, {int, float}); empty: not a number."""
    if name.startswith("model_kwargs."):
        return {int, float}  # the model decides; an integer range needs a step
    hints = typing.get_args(_hint(name)) or (_hint(name),)
    return {h for h in hints if h in (int, float)}


def _param(name: str, spec, fixed: dict, where: str) -> dict:
    key = name.partition(".")[2] if name.startswith("model_kwargs.") else name
    if not name.startswith("model_kwargs.") and name not in RUN_FIELDS and name not in RECIPE_FIELDS:
        raise ConfigError(f"{where}: [space] {name} is not a config or recipe key (or model_kwargs.NAME)")
    if name in NOT_SWEPT or name == "model_kwargs" or not key.isidentifier():
        raise ConfigError(f"{where}: [space] {name} cannot be swept: it says where a run goes or how it is "
                          "judged; set it at the top level")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: [space] {name} must be a table such as {{ low = .., high = .. }} or "
                          "{ choices = [..] }")
    kinds = set(spec)
    if kinds == {"choices"}:
        choices = spec["choices"]
        if not isinstance(choices, list) or not 1 <= len(choices) <= MAX_CHOICES or \
                not all(isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError(f"{where}: [space] {name}.choices must be a list of 1 to {MAX_CHOICES} numbers, "
                              "strings or booleans")
        out = {"choices": choices}
    elif kinds <= {"low", "high", "log", "step"} and {"low", "high"} <= kinds:
        out = _range(name, spec, where)
    else:
        raise ConfigError(f"{where}: [space] {name} must be {{ low, high [, log] }}, {{ low, high, step }} or "
                          f"{{ choices }}, not {sorted(kinds)}")
    grid = _grid(out)
    for value in [grid[0], grid[-1], *grid[1:-1]]:  # the ends, then inside: a typo fails now, not in trial 17
        try:
            resolve(_with(fixed, name, value), origin=where)
        except ConfigError as e:
            raise ConfigError(f"{where}: [space] {name} = {value!r} is refused ({e})") from None
    return out


def _range(name: str, spec: dict, where: str) -> dict:
    low, high = spec["low"], spec["high"]
    step, use_log = spec.get("step"), spec.get("log", False)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
    if not numbers or not low < high:
        raise ConfigError(f"{where}: [space] {name} needs numbers low < high (got {low!r}, {high!r})")
    if not isinstance(use_log, bool):
        raise ConfigError(f"{where}: [space] {name}.log must be true or false")
    if use_log and low <= 0:
        raise ConfigError(f"{where}: [space] {name} with log = true needs low > 0")
    kind = _kind(name)
    if not kind:
        raise ConfigError(f"{where}: [space] {name} is not a number: give it as {{ choices = [..] }}")
    integer = step is not None or float not in kind  # an integer key draws integers, step 1 by default
    if integer:
        step = 1 if step is None else step
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, step)) or step <= 0:
            raise ConfigError(f"{where}: [space] {name} is an integer range: low, high and step must be "
                              f"integers, step > 0 (got low = {low!r}, high = {high!r}, step = {step!r})")
        if use_log and step != 1:
            raise ConfigError(f"{where}: [space] {name}: log = true takes no step")
        return {"low": low, "high": low + (high - low) // step * step, "log": use_log, "step": step}
    return {"low": low, "high": high, "log": use_log}


def _grid(spec: dict, points: int = 7) -> list:
    """The ends of a range and points between them (every choice of a choice)."""
    if "choices" in spec:
        return list(spec["choices"])
    low, high = spec["low"], spec["high"]
    fracs = [i / (points - 1) for i in range(points)]
    if spec["log"]:
        values = [math.exp(math.log(low) + f * (math.log(high) - math.log(low))) for f in fracs]
    else:
        values = [low + f * (high - low) for f in fracs]
    if "step" in spec:
        step = spec["step"]
        values = sorted({min(high, low + round((v - low) / step) * step) for v in values})
    else:
        values = [min(high, max(low, float(v))) for v in values]
    return values


def _check_draws(fixed: dict, params: dict, where: str) -> None:
    """Draws of all the keys together (each alone was checked): the lows, the highs, and a few
    mixes, so a combination resolve() refuses is found before trial 0."""
    rng = random.Random(0)
    grids = {name: _grid(spec) for name, spec in params.items()}
    draws = [{n: g[0] for n, g in grids.items()}, {n: g[-1] for n, g in grids.items()}]
    draws += [{n: rng.choice(g) for n, g in grids.items()} for _ in range(8)]
    for draw in draws:
        try:
            resolve(_values(fixed, draw), origin=where)
        except ConfigError as e:
            raise ConfigError(f"{where}: [space] the draw {draw} is refused ({e}): narrow the ranges so every "
                              "combination is valid") from None


def _values(fixed: dict, draw: dict) -> dict:
    values = dict(fixed)
    for name, value in draw.items():
        values = _with(values, name, value)
    return values


def _with(values: dict, name: str, value) -> dict:
    if name.startswith("model_kwargs."):
        return {**values, "model_kwargs": {**values.get("model_kwargs", {}), name.partition(".")[2]: value}}
    return {**values, name: value}


def _suggest(trial, name: str, spec: dict):
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    if "step" in spec:
        return trial.suggest_int(name, spec["low"], spec["high"], step=spec["step"], log=spec["log"])
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=spec["log"])
