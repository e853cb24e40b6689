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
from trainlab.catalog import problem as dataset_problem
from trainlab.errors import ConfigError
from trainlab.recipes import (
    DEFAULT_RECIPE,
    PRESETS,
    RECIPE_FIELDS,
    Recipe,
    check_fields,
    get_recipe,
    option,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

# trainlab.models is imported where it is used (resolve, _model_spec_ok): it imports torch, and
# the CLI reads Config's fields for every --help, which must answer without torch.

MONITORABLE = ("val_loss", "val_acc", "train_loss", "train_acc")


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


# Run settings checked by a table, like the recipe's fields (recipes.RECIPE_LIMITS): a test
# of (value, config) and the words for the error. Upper bounds stop typos from reaching an
# allocation or the OS; seeds are what torch.manual_seed takes (below 2**63).
RUN_LIMITS = {
    "seed": (lambda v, c: 0 <= v < 2**63, "must be an int in [0, 2**63)"),
    "threads": (lambda v, c: 1 <= v <= 1024, "must be at least 1 and at most 1024"),
    "val_size": (lambda v, c: 0 <= v <= 10**9, "must be 0 (no validation split) or more, up to 10**9"),
    "patience": (lambda v, c: 0 <= v <= 10**6, "must be 0 (off) or more, up to 1000000"),
    "save_every": (lambda v, c: 0 <= v <= 10**6, "must be 0 (off) or more, up to 1000000"),
    "keep": (lambda v, c: 0 <= v <= 10**6, "must be 0 (all) or more, up to 1000000"),
    "keep_top": (lambda v, c: 0 <= v <= 10**4, "must be 0 (off) or more, up to 10000"),
    "val_every": (lambda v, c: 0 <= v <= 10**9, "must be 0 (once per epoch) or a number of optimizer steps up to 10**9"),
    "min_delta": (lambda v, c: 0 <= v <= 1e6, "must be 0 or more, up to 1000000"),
    "device": (lambda v, c: re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]{1,3})?", v) is not None,
               "use auto, cpu, cuda, cuda:N or mps"),
    "mode": (lambda v, c: v in ("auto", "min", "max"), "choose min, max or auto"),
    "rerun": (lambda v, c: v in ("resume", "refuse"), "choose resume (continue the named run when the same "
              "command runs again) or refuse"),
    "image_size": (lambda v, c: 1 <= v <= 8192, "must be at least 1 and at most 8192 (pixels a side)"),
    "memory_budget": (lambda v, c: parse_bytes(v) is not None,
                      "give a number of bytes, or one with a unit such as 512MiB, 2GiB or 4GB"),
    "unfreeze_at": (lambda v, c: 0 <= v <= 10**5, "must be 0 (stay frozen) or an epoch up to 100000"),
    "body_lr_mult": (lambda v, c: 0 < v <= 100, "must be greater than 0 and at most 100"),
    "train_per_class": (lambda v, c: 0 <= v <= 10**9, "must be 0 (all) or more, up to 10**9"),
    "log_every": (lambda v, c: 0 <= v <= 10**9, "must be 0 (per epoch only) or a number of steps up to 10**9"),
    "track": (lambda v, c: _track_ok(v),
              "use mlflow (MLFLOW_TRACKING_URI, else a local store in runs_dir) or mlflow:URI (e.g. "
              "mlflow:http://127.0.0.1:5000); no user name or password in it: set MLFLOW_TRACKING_USERNAME and "
              "MLFLOW_TRACKING_PASSWORD (config.toml records the URI)"),
    "class_weights": (lambda v, c: parse_class_weights(v) is not None,
                      "use auto, or one finite weight of 0 or more per class separated by commas (e.g. 1,1,5), "
                      "at least one above 0"),
}


def _track_ok(track: str) -> bool:
    """mlflow or mlflow:URI, printable, no spaces, and no user:password@ in the URI's host part."""
    kind, colon, uri = track.partition(":")
    if kind != "mlflow" or (colon and not uri) or len(track) > 2000 or not track.isprintable() or " " in track:
        return False
    return "@" not in (uri.partition("://")[2].split("/")[0] if "://" in uri else "")


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | None) -> int | None:
    """"2GiB", "500MB", "1.5GB", "1000000" as bytes; None for None or anything else."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]{1,15}(?:\.[0-9]{1,6})?)\s*([A-Za-z]{0,3})\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        return None
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    return value if value < 2**62 else None


def format_bytes(n: float) -> str:
    """Bytes for a sentence: "512 B", "12.3 KiB", "4.0 MiB", "1.2 GiB" (small sizes stay visible)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n)} B"


MAX_CLASS_WEIGHTS = 100_000  # a weight per class; more is a typo, not a dataset


def parse_class_weights(text: str | None) -> str | list[float] | None:
    """ "auto" -> "auto"; "1, 1,5" -> [1.0, 1.0, 5.0]; None for anything else (a bad value)."""
    if text is None:
        return None
    if text.strip() == "auto":
        return "auto"
    parts = text.split(",")
    if len(parts) > MAX_CLASS_WEIGHTS:
        return None
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        return None
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        return None
    return weights


MAX_NAME_BYTES = 200  # a run folder name; the OS limit is 255 and suffixes get added
_PLAIN = (bool, int, float, str)  # what a model_kwargs value (or list item) may be


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "..." + text[-10:]


def _path_problem(path: str) -> str | None:
    if "\0" in path:
        return "contains a NUL byte"
    if any(len(os.fsencode(part)) > 255 for part in Path(path).parts):
        return "has a path component over 255 bytes"
    return None


def _model_spec_ok(spec: str) -> bool:
    """A registered name (checked when the model is built) or module.path:function."""
    from trainlab import models  # (torch: not imported for --help, which reads Config's fields)

    if len(spec) > 100:
        return False
    if ":" not in spec:
        return models.NAME.fullmatch(spec) is not None
    module, _, function = spec.partition(":")
    return all(part.isidentifier() for part in module.split(".")) and function.isidentifier()


def _model_kwargs_problem(kwargs: dict) -> str | None:
    """model_kwargs is a flat table of name -> number, bool, string or a list of those."""
    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            return f"model_kwargs key {_short(key)} is invalid: keys are Python identifiers such as hidden or dropout"
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if not isinstance(item, _PLAIN):
                return (f"model_kwargs.{key} = {_short(value)} is invalid: use a number, true/false, "
                        "a string or a flat list of those")
            if isinstance(item, float) and not math.isfinite(item):
                return f"model_kwargs.{key} = {_short(value)} is invalid: numbers must be finite"
            if isinstance(item, str) and "\0" in item:
                return f"model_kwargs.{key} = {_short(value)} is invalid: contains a NUL byte"
    return None


_PREFIX = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*\.?")


def _check_finetune(cfg: Config) -> None:
    """The fine-tuning keys on their own (what the model holds is checked when it is built)."""
    if cfg.freeze is not None:
        parts = [p.strip() for p in cfg.freeze.split(",")]
        if not cfg.freeze.strip() or not all(_PREFIX.fullmatch(p) for p in parts):
            raise ConfigError(f"freeze = {_short(cfg.freeze)} is invalid: use body (everything but the head) "
                              "or parameter-name prefixes separated by commas, e.g. 0,3 or blocks.0")
    if cfg.unfreeze_at and cfg.freeze is None:
        raise ConfigError(f"unfreeze_at = {cfg.unfreeze_at} needs freeze: name what is frozen until then "
                          "(e.g. freeze = \"body\")")
    if cfg.init_strict and cfg.init_from is None:
        raise ConfigError("init_strict is on but init_from is not set: name the weights to start from")
    if (cfg.init_map or cfg.reinit_head) and cfg.init_from is None:
        raise ConfigError("init_map and reinit_head act on init_from's weights, and init_from is not set: name the "
                          "weights to start from")
    if cfg.init_map:
        parse_init_map(cfg.init_map)
    if cfg.init_from is not None and not cfg.init_from.strip():
        raise ConfigError("init_from = '' is invalid: name a run folder or a weights file")


def validate(cfg: Config) -> Config:
    """Every value, before any data is loaded: an error is one sentence naming the key."""
    for f in fields(cfg):  # no string reaches a file name, the OS or torch with a NUL byte
        value = getattr(cfg, f.name)
        if isinstance(value, str) and "\0" in value:
            raise ConfigError(f"{f.name} = {_short(value)} is invalid: contains a NUL byte")
    check_fields(cfg, RUN_LIMITS)
    if cfg.monitor.startswith("test"):
        raise ConfigError(f"monitor = {cfg.monitor!r} is invalid: the test split is for reporting "
                          "only and never chooses anything; monitor val_loss or val_acc")
    if cfg.monitor not in MONITORABLE:
        raise ConfigError(f"monitor = {_short(cfg.monitor)} is invalid: choose one of {', '.join(MONITORABLE)}")
    if cfg.monitor.startswith("val") and cfg.val_size == 0:
        raise ConfigError(f"monitor = {cfg.monitor!r} needs a validation split, but val_size = 0; "
                          "set val_size > 0 or monitor train_loss")
    if cfg.val_every and not cfg.monitor.startswith("val"):
        raise ConfigError(f"val_every = {cfg.val_every} validates mid-epoch, where no {cfg.monitor} exists: "
                          "monitor val_loss or val_acc, or leave val_every at 0")
    if not _model_spec_ok(cfg.model):
        raise ConfigError(f"model = {_short(cfg.model)} is invalid: name a registered model (e.g. mlp, "
                          "cnn-fast) or your own factory as package.module:function")
    problem = dataset_problem(cfg.dataset)
    if problem:
        raise ConfigError(f"dataset = {_short(cfg.dataset)} is invalid: {problem}")
    problem = _model_kwargs_problem(cfg.model_kwargs)
    if problem:
        raise ConfigError(problem)
    name = cfg.name
    if name is not None and (not name or not name.isprintable() or name.startswith(".") or "/" in name
                             or "\\" in name or len(name.encode()) > MAX_NAME_BYTES):
        raise ConfigError(f"name = {_short(name)} is invalid: use a plain folder name (printable, "
                          f"up to {MAX_NAME_BYTES} bytes, no '/' or '\\', not starting with '.')")
    _check_finetune(cfg)
    for key in ("runs_dir", "data_dir", "init_from"):
        path = getattr(cfg, key)
        problem = path is not None and _path_problem(path)
        if problem:
            raise ConfigError(f"{key} = {_short(path)} is invalid: it {problem}")
    # run folders are made inside runs_dir: the nearest part of it that exists must be a folder
    for part in (Path(cfg.runs_dir), *Path(cfg.runs_dir).parents):
        if os.path.exists(part):
            if not os.path.isdir(part):
                raise ConfigError(f"runs_dir = {cfg.runs_dir!r} is invalid: {part} is a file, not a folder")
            break
    return cfg




def dumps_toml(d: dict) -> str:
    """Write a flat config dict as TOML (values: str, int, float, bool, flat dicts)."""
    import tomli_w

    return tomli_w.dumps(d)


__all__ = ["Config", "resolve", "load_toml", "validate", "dumps_toml", "replace"]


MAX_INIT_RENAMES = 64


def parse_init_map(text: str | None) -> list[tuple[str, str]]:
    """ "model.backbone.=,fc.=head." -> [("model.backbone.", ""), ("fc.", "head.")]."""
    if not text:
        return []
    parts = text.split(",")
    if len(parts) > MAX_INIT_RENAMES:  # each rename passes over every key of the file
        raise ConfigError(f"init_map gives {len(parts):,} renames, more than {MAX_INIT_RENAMES}: map the common "
                          "prefixes (OLD=NEW renames every key that starts with OLD)")
    pairs = []
    for part in parts:
        old, eq, new = part.strip().partition("=")
        if not eq or not old:
            raise ConfigError(f"init_map = {text!r} is invalid: give OLD=NEW prefix renames separated by commas, "
                              "e.g. model.backbone.=,fc.=head. (NEW may be empty)")
        pairs.append((old, new))
    return pairs
