"""trainlab: train image classifiers with PyTorch, with the practical patterns done right."""

import importlib
import importlib.util

from trainlab._version import __version__
from trainlab.config import Config, resolve
from trainlab.errors import ConfigError, DataError, TrainlabError
from trainlab.text import protect_log as _protect_log

_protect_log()  # a class or file name in a log line's arguments cannot forge a line or run escapes

# These names import torch (seconds): each is imported when first used (PEP 562), so that
# `import trainlab`, `trainlab --help` and `trainlab --version` answer without torch.
_LAZY = {
    "train": ("trainlab.api", "train"),
    "resume": ("trainlab.api", "resume"),
    "evaluate_run": ("trainlab.api", "evaluate_run"),
    "load_model": ("trainlab.api", "load_model"),
    "TrainResult": ("trainlab.api", "TrainResult"),
    "Dataset": ("trainlab.data", "Dataset"),
    "DeviceLoader": ("trainlab.data", "DeviceLoader"),
    "from_arrays": ("trainlab.data", "from_arrays"),
    "load_dataset": ("trainlab.data", "load_dataset"),
    "register_format": ("trainlab.data", "register_format"),
    "pick_device": ("trainlab.devices", "pick_device"),
    "evaluate": ("trainlab.inference", "evaluate"),
    "build_model": ("trainlab.models", "build"),
    "register": ("trainlab.models", "register"),
    "Callback": ("trainlab.training.callbacks", "Callback"),
    "fit": ("trainlab.training.loop", "fit"),
    "lr_find": ("trainlab.training.lr_find", "lr_find"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        if not name.startswith("_") and importlib.util.find_spec(f"trainlab.{name}") is not None:
            # a subpackage (trainlab.data.register_format in a user's module), imported on first use
            return importlib.import_module(f"trainlab.{name}")
        raise AttributeError(f"module 'trainlab' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["__version__", "train", "resume", "evaluate_run", "load_model", "TrainResult", "Config", "resolve",
           "Dataset", "DeviceLoader", "from_arrays", "load_dataset", "fit", "evaluate", "pick_device",
           "build_model", "register", "register_format", "Callback", "lr_find", "TrainlabError", "ConfigError", "DataError"]
