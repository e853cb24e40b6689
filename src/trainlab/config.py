"""The run's configuration: one flat namespace, from defaults, a TOML file and the CLI.

Keys are either run settings (the `Config` fields below) or recipe fields (see
trainlab.recipes), so `epochs = 20` in a file and `--epochs 20` on the command line mean
the same. Unknown keys and wrong types are errors that name the key; values are checked
before any data is loaded or any training starts.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from trainlab.catalog import absolute as absolute_dataset
from trainlab.catalog import flips_keep_labels
from trainlab.config_checks import MONITORABLE, validate
from trainlab.errors import ConfigError
from trainlab.recipes import (
    DEFAULT_RECIPE,
    PRESETS,
    RECIPE_FIELDS,
    Recipe,
    get_recipe,
    option,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

# trainlab.models is imported where it is used (resolve; config_checks._model_spec_ok): it imports torch, and
# the CLI reads Config's fields for every --help, which must answer without torch.



@dataclass(frozen=True)
class Config:
    """A run's settings: built only by `resolve` (validated), changed only through it
    (`cfg.with_changes(...)`), never assigned to."""

    # each field's help is its flag's help in `trainlab train --help` (cli/args.py)
    dataset: str = option("fashion-mnist", "fashion-mnist (default), mnist, idx:DIR, folder:DIR (image files), "
                          "cifar10:DIR, cifar100:DIR, or SCHEME:ARG of a format registered by a module named "
                          "with --allow-import")
    data_dir: str | None = option(None, "folder with the four IDX files (else TRAINLAB_DATA, the cache, download)")
    model: str = option("mlp", "mlp (default), mlp-reg, cnn, ... or module:function")
    model_kwargs: dict = field(default_factory=dict, metadata={"help": "the model factory's keyword arguments"})
    recipe: str = option("auto", "auto (default: the preset registered with the model, else fast), textbook, "
                         "fast, fast-cnn or resnet; the recipe fields below override it")
    seed: int = option(0, "seeds every random draw: initialization, split, data order, augmentation (default 0)")
    device: str = option("auto", "auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    threads: int | None = option(None, "CPU threads for torch (default: all cores)")
    val_size: int = option(5000, "validation samples carved from train (default 5000)")  # stratified
    name: str | None = option(None, "run folder name under --runs-dir (default: generated)")  # <model>-<recipe>-<time>
    runs_dir: str = option("runs", "where run folders go (default runs)")
    rerun: str = option("resume", "the same command again on a named run: resume (default) continues it, "
                        "refuse stops with an error")  # training.rerun
    quiet: bool = option(False, "no progress bar or per-epoch lines")
    # model selection, early stopping and saving (see trainlab.training.callbacks); never a test metric
    monitor: str = option("val_loss", "metric for best.pt and early stopping: val_loss (default), val_acc, "
                          "train_loss, train_acc")
    mode: str = option("auto", "min, max or auto (default: from the metric's name)")
    patience: int = option(0, "stop after this many epochs without improvement (0 = off); restores the best weights")
    min_delta: float = option(0.0, "the least change that counts as an improvement")
    save_every: int = option(0, "also keep epoch-NNNN.pt every N epochs (0 = off)")
    keep: int = option(3, "how many epoch-NNNN.pt to keep (0 = all; default 3)")
    keep_top: int = option(0, "also keep the K best checkpoints by the monitored metric as top-epoch-NNNN.pt "
                           "(top-step-NNNNNNNN.pt for mid-epoch validations; 0 = off)")
    val_every: int = option(0, "also validate every N optimizer steps mid-epoch (0 = once per epoch); early "
                            "stopping, plateau and best.pt can act there, and patience counts validations")
    tensorboard: bool = option(False, "also write TensorBoard events")  # pip install trainlab[tensorboard]
    track: str | None = option(None, "mlflow (MLFLOW_TRACKING_URI, else a local store in runs_dir) or mlflow:URI: "
                               "also log the run to MLflow (pip install trainlab[mlflow]); a failure never stops "
                               "training")  # training.trackers
    log_every: int = option(50, "optimizer steps between the train-loss readings sent to TensorBoard and MLflow "
                            "(0 = per epoch only; default 50)")
    # None = off: the test split is evaluated once, at the end, on the model chosen by validation
    test_every_epoch: bool | None = option(None, "also evaluate the test split every epoch (an evaluation pass "
                                           "each; labelled 'not for selection'); off: the test split is "
                                           "evaluated once, at the end")
    # speed options: same numbers up to float rounding (see benchmarks/RESULTS.md)
    compile: bool = option(False, "torch.compile the training forward")  # CPU: needs gcc, tens of seconds
    # None = on for models registered conv (measured 1.4x)
    channels_last: bool | None = option(None, "NHWC memory layout for convolutional models")
    tf32: bool = option(False, "CUDA: allow TF32 matmuls and convolutions")
    sync_bn: bool = option(False, "DDP on CUDA: synchronize BatchNorm statistics across GPUs")
    malloc_tuning: bool = option(True, "CPU: keep freed activation memory instead of returning it to the OS "
                                 "(default on)")
    # image folders (folder:DIR, trainlab.data.folder)
    image_size: int | None = option(None, "folder: images: resize the shorter side to N and centre-crop NxN "
                                    "(default: the most common size)")
    skip_bad: bool = option(False, "folder: images: leave out files that cannot be decoded (counted) instead "
                            "of stopping")
    # None = half the memory free now (CPU) or half the free GPU memory (CUDA)
    memory_budget: str | None = option(None, "stream a split larger than this to the device in chunks (bytes, "
                                       "or e.g. 2GiB; default: half the free memory); same results")
    # weights in: fine-tuning from another run or file (see trainlab.training.finetune)
    init_from: str | None = option(None, "start from these weights: a run folder, trainlab checkpoint, "
                                   "state_dict .pt/.pth or .safetensors (matched by name; a head of another "
                                   "class count is re-initialized)")
    init_strict: bool = option(False, "with --init-from: any missing, unexpected or mis-shaped tensor is an error")
    init_map: str | None = option(None, "with --init-from: OLD=NEW[,OLD=NEW] renames of its tensor-name "
                                  "prefixes, applied before trainlab's own matching (which strips or adds "
                                  "prefixes such as model., module., net.)")
    reinit_head: bool | None = option(None, "with --init-from: the head (the last Linear) keeps its fresh "
                                      "initialization even when the class counts agree")
    freeze: str | None = option(None, "body (everything but the head: the last Linear) or PREFIX[,PREFIX]: "
                                "parameters not trained")
    unfreeze_at: int = option(0, "with --freeze: the frozen parameters train from this epoch on (1-based; "
                              "0 = never)")
    body_lr_mult: float = option(1.0, "learning rate of everything but the head, as a multiple of --lr "
                                 "(default 1)")
    train_per_class: int = option(0, "train on at most N images per class (seeded, stratified; 0 = all)")
    # imbalanced data: one of the two (training.build.class_balance)
    class_weights: str | None = option(None, "weigh the loss by class: auto (inverse frequency in the training "
                                       "split, mean 1) or one weight per class, comma-separated (e.g. 1,1,5)")
    balanced_sampler: bool = option(False, "draw each epoch's training batches with replacement, every class "
                                    "equally often (seeded: exact on resume)")
    # the resolved recipe: preset + overrides (filled by `resolve`)
    train: Recipe = field(default_factory=lambda: PRESETS[DEFAULT_RECIPE])

    def with_changes(self, **values) -> "Config":
        """A copy with run or recipe fields changed, resolved and validated again."""
        return resolve({**self.to_dict(), **values})

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
        if hint is list and isinstance(value, (list, tuple)):
            return True, list(value)
        if hint is list and isinstance(value, str):  # a flag's "10,20": its numbers (the limits check them)
            parts = [p.strip() for p in value.split(",")] if value.strip() else []
            return True, [int(p) if re.fullmatch(r"[0-9]{1,9}", p) else p for p in parts]
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


MAX_TOML_BYTES = 1 << 20  # a config is a few hundred bytes; this stops --config /dev/zero


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a TOML file") from None
    except PermissionError:
        raise ConfigError(f"config file {path} cannot be read: permission denied") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise ConfigError(f"config file {str(path)!r} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if len(raw) > MAX_TOML_BYTES:
        raise ConfigError(f"config file {path} is over {MAX_TOML_BYTES} bytes: not a trainlab config")
    try:
        return tomllib.loads(raw.decode("utf-8-sig"))  # -sig: a BOM from a Windows editor is fine
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}); "
                          "TOML files must be UTF-8") from None
    except ValueError as e:  # TOMLDecodeError, or an integer of over 4300 digits
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def resolve(values: dict | None = None, *, base: dict | None = None, origin: str = "config") -> Config:
    """Build a validated Config from `base` (e.g. a TOML file) updated by `values` (e.g. CLI)."""
    merged: dict = {}
    for source, name in ((base or {}, origin), (values or {}, "command line")):
        for key, value in source.items():
            if not isinstance(key, str):
                raise ConfigError(f"{name}: key {key!r} is invalid: keys are strings")
            key = key.replace("-", "_")
            merged[key] = _check_key(key, value, name)
    if isinstance(merged.get("model_kwargs"), dict):  # tuples as lists: what TOML stores and reads back
        merged["model_kwargs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in merged["model_kwargs"].items()}
    run = {k: v for k, v in merged.items() if k in RUN_FIELDS}
    recipe_overrides = {k: v for k, v in merged.items() if k in RECIPE_FIELDS}
    from trainlab import models  # (torch: not imported for --help, which reads Config's fields)

    cfg = Config(**run)  # the types checked by the dataclass's fields; the values next
    model = models.info(cfg.model)  # an import path (module:function) has the defaults
    recipe = (model.recipe or DEFAULT_RECIPE) if cfg.recipe == "auto" else cfg.recipe  # auto: the model's measured best
    train = get_recipe(recipe, **recipe_overrides)
    # a preset's flips only where mirroring keeps the label (unknown: off); asked for by name: kept
    flips = [k for k in ("hflip", "tta_flip") if getattr(train, k) and k not in recipe_overrides]
    if flips and not flips_keep_labels(absolute_dataset(cfg.dataset))[0]:
        train = replace(train, **{k: False for k in flips})
    cfg = replace(cfg, recipe=recipe, train=train,
                  channels_last=model.conv if cfg.channels_last is None else cfg.channels_last)
    validate(cfg)
    # folders recorded absolute: a run trained from ./photos is evaluated from anywhere
    return replace(cfg, dataset=absolute_dataset(cfg.dataset),
                   data_dir=None if cfg.data_dir is None else os.path.abspath(os.path.expanduser(cfg.data_dir)))


def dumps_toml(d: dict) -> str:
    """Write a flat config dict as TOML (values: str, int, float, bool, flat dicts)."""
    import tomli_w

    return tomli_w.dumps(d)


__all__ = ["Config", "resolve", "load_toml", "dumps_toml", "replace"]

