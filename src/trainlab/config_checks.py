"""Every value of a run's config checked, before any data is loaded: the limits table, the
parsers of the values written as text (class weights, init_map), and `validate`, which names
the key in one sentence. `config.resolve` calls it; nothing here builds a Config."""

from __future__ import annotations

import math
import os
import re
from dataclasses import fields
from pathlib import Path

from trainlab.catalog import problem as dataset_problem
from trainlab.errors import ConfigError
from trainlab.recipes import check_fields
from trainlab.text import parse_bytes

MONITORABLE = ("val_loss", "val_acc", "train_loss", "train_acc")


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


def _check_finetune(cfg) -> None:
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


def validate(cfg):
    """Every value of the Config `cfg`, before any data is loaded: an error is one sentence naming
    the key. Returns `cfg`."""
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
