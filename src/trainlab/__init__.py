"""trainlab: train image classifiers with PyTorch, with the practical patterns done right."""

from trainlab._version import __version__
from trainlab.analysis.tables import protect_log as _protect_log
from trainlab.api import TrainResult, evaluate_run, load_model, resume, train  # noqa: E402
from trainlab.config import Config, resolve  # noqa: E402
from trainlab.data import Dataset, DeviceLoader, from_arrays, load_dataset, register_format  # noqa: E402
from trainlab.devices import pick_device  # noqa: E402
from trainlab.errors import ConfigError, DataError, TrainlabError  # noqa: E402
from trainlab.inference import evaluate  # noqa: E402
from trainlab.models import build as build_model  # noqa: E402
from trainlab.models import register
from trainlab.training.callbacks import Callback  # noqa: E402
from trainlab.training.loop import fit  # noqa: E402
from trainlab.training.lr_find import lr_find  # noqa: E402

_protect_log()  # a class or file name in a log line's arguments cannot forge a line or run escapes

__all__ = ["__version__", "train", "resume", "evaluate_run", "load_model", "TrainResult", "Config", "resolve",
           "Dataset", "DeviceLoader", "from_arrays", "load_dataset", "fit", "evaluate", "pick_device",
           "build_model", "register", "register_format", "Callback", "lr_find", "TrainlabError", "ConfigError", "DataError"]
