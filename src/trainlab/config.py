"""The run's configuration: one flat namespace, from defaults, a TOML file and the CLI.

Keys are either run settings (the `Config` fields below) or recipe fields (see
trainlab.recipes), so `epochs = 20` in a file and `--epochs 20` on the command line mean
the same. Unknown keys and wrong types are errors that name the key; values are checked
before any data is loaded or any training starts.
"""

from __future__ import annotations

import difflib
import re
import sys
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .errors import ConfigError
from .recipes import CONV_MODELS, DEFAULT_RECIPE, MODEL_RECIPES, PRESETS, RECIPE_FIELDS, Recipe, get_recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

MONITORABLE = ("val_loss", "val_acc", "train_loss", "train_acc")


@dataclass
class Config:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    model: str = "mlp"
    model_kwargs: dict = field(default_factory=dict)
    recipe: str = "auto"  # auto = the measured best preset for the model (recipes.MODEL_RECIPES)
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # CPU threads; None = torch's default (all cores)
    val_size: int = 5000  # carved from the training split, stratified, for model selection
    name: str | None = None  # run folder name; None = <model>-<recipe>-<time>
    runs_dir: str = "runs"
    quiet: bool = False
    # model selection, early stopping and saving (see trainlab.session)
    monitor: str = "val_loss"  # the metric best.pt and early stopping follow; never a test metric
    mode: str = "auto"  # min | max | auto (min for losses, max for accuracies)
    patience: int = 0  # epochs without improvement before stopping; 0 = never stop early
    min_delta: float = 0.0  # the least change that counts as an improvement
    save_every: int = 0  # also keep epoch-NNNN.pt every N epochs; 0 = off
    keep: int = 3  # how many epoch-NNNN.pt files to keep; 0 = all
    tensorboard: bool = False  # also write TensorBoard events (pip install trainlab[tensorboard])
    # speed options: same numbers up to float rounding (see benchmarks/RESULTS.md)
    compile: bool = False  # torch.compile the training forward (CPU: needs gcc, tens of seconds)
    channels_last: bool | None = None  # NHWC layout; None = on for convolutional models (measured 1.4x)
    tf32: bool = False  # CUDA only: TF32 tensor-core matmuls and convolutions
    sync_bn: bool = False  # DDP on CUDA: synchronize BatchNorm statistics across GPUs
    malloc_tuning: bool = True  # CPU: keep freed activation memory instead of returning it to the OS
    # the resolved recipe: preset + overrides (filled by `resolve`)
    train: Recipe = field(default_factory=lambda: PRESETS[DEFAULT_RECIPE])

    def to_dict(self) -> dict:
        """Plain values only: written to config.toml and stored in checkpoints."""
        d = asdict(self)
        d.pop("train")
        d.update(self.train.to_dict())
        return {k: v for k, v in d.items() if v is not None}


RUN_FIELDS = {f.name: f for f in fields(Config) if f.name != "train"}


def _type_ok(value, annotation) -> tuple[bool, object]:
    """Check `value` against a simple annotation; ints are accepted where floats are."""
    hints = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for hint in hints:
        if hint is type(None) and value is None:
            return True, value
        if hint is bool and isinstance(value, bool):
            return True, value
        if hint is int and isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if hint in (str, dict) and isinstance(value, hint):
            return True, value
    return False, value


_HINTS = {}


def _hint(name: str):
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(Config))
        _HINTS.update(typing.get_type_hints(Recipe))
    return _HINTS[name]


def _check_key(key: str, value, origin: str):
    known = list(RUN_FIELDS) + list(RECIPE_FIELDS)
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{origin}: unknown key {key!r}{hint}; known keys: {', '.join(known)}")
    ok, value = _type_ok(value, _hint(key))
    if not ok:
        raise ConfigError(f"{origin}: {key} = {value!r} has the wrong type: "
                          f"expected {_type_name(_hint(key))}")
    return value


def _type_name(annotation) -> str:
    args = typing.get_args(annotation) or (annotation,)
    return " or ".join("none" if a is type(None) else a.__name__ for a in args)


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def resolve(values: dict | None = None, *, base: dict | None = None, origin: str = "config") -> Config:
    """Build a validated Config from `base` (e.g. a TOML file) updated by `values` (e.g. CLI)."""
    merged: dict = {}
    for source, name in ((base or {}, origin), (values or {}, "command line")):
        for key, value in source.items():
            key = key.replace("-", "_")
            merged[key] = _check_key(key, value, name)
    run = {k: v for k, v in merged.items() if k in RUN_FIELDS}
    recipe_overrides = {k: v for k, v in merged.items() if k in RECIPE_FIELDS}
    cfg = Config(**run)
    if cfg.recipe == "auto":  # the measured best preset for this model
        cfg.recipe = MODEL_RECIPES.get(cfg.model, DEFAULT_RECIPE)
    if cfg.channels_last is None:
        cfg.channels_last = cfg.model in CONV_MODELS
    cfg.train = get_recipe(cfg.recipe, **recipe_overrides)
    return validate(cfg)


def validate(cfg: Config) -> Config:
    if cfg.val_size < 0:
        raise ConfigError(f"val_size = {cfg.val_size} is invalid: must be 0 (no validation split) or more")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads = {cfg.threads} is invalid: must be at least 1")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"device = {cfg.device!r} is invalid: use auto, cpu, cuda, cuda:N or mps")
    if cfg.monitor.startswith("test"):
        raise ConfigError(f"monitor = {cfg.monitor!r} is invalid: the test split is for reporting "
                          "only and never chooses anything; monitor val_loss or val_acc")
    if cfg.monitor not in MONITORABLE:
        raise ConfigError(f"monitor = {cfg.monitor!r} is invalid: choose one of {', '.join(MONITORABLE)}")
    if cfg.monitor.startswith("val") and cfg.val_size == 0:
        raise ConfigError(f"monitor = {cfg.monitor!r} needs a validation split, but val_size = 0; "
                          "set val_size > 0 or monitor train_loss")
    if cfg.mode not in ("auto", "min", "max"):
        raise ConfigError(f"mode = {cfg.mode!r} is invalid: choose min, max or auto")
    for key in ("patience", "save_every", "keep"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} = {getattr(cfg, key)} is invalid: must be 0 (off) or more")
    if cfg.min_delta < 0:
        raise ConfigError(f"min_delta = {cfg.min_delta} is invalid: must be 0 or more")
    if cfg.name is not None and (not cfg.name or "/" in cfg.name or cfg.name in (".", "..")):
        raise ConfigError(f"name = {cfg.name!r} is invalid: use a plain folder name")
    return cfg


def with_overrides(cfg: Config, **values) -> Config:
    """A copy of `cfg` with run or recipe fields changed, validated again."""
    d = cfg.to_dict()
    d.update(values)
    return resolve(d)


def dumps_toml(d: dict) -> str:
    """Write a flat config dict as TOML (values: str, int, float, bool, flat dicts)."""
    import tomli_w

    return tomli_w.dumps(d)


__all__ = ["Config", "resolve", "load_toml", "validate", "with_overrides", "dumps_toml", "replace"]
