"""The library's front: train, resume, load and evaluate runs.

The CLI is a thin layer over these calls; a notebook or script uses them the same way.
"""

from __future__ import annotations

from pathlib import Path

from trainlab.data import Dataset
from trainlab.inference import (
    check_data_fits,
    checkpoint_path,
    evaluate_checkpoint,
    kept_weights,
    load_model,
    predict_images,
)
from trainlab.training.build import make_loaders
from trainlab.training.callbacks import Callback
from trainlab.training.resume import resume
from trainlab.training.result import TrainResult
from trainlab.training.session import Session
from trainlab.training.start import train
from trainlab.training.state import seed_everything


def evaluate_run(path_or_run: str | Path, *, data: Dataset | None = None, data_dir=None,
                 device: str = "auto", allow_import=(), model=None) -> dict:
    """Per-class test results of a finished run (or checkpoint) on its data set
    (metrics.summarize(): accuracy, per_class, confusion_matrix, most_confused)."""
    return evaluate_checkpoint(path_or_run, data=data, data_dir=data_dir, device=device,
                               allow_import=allow_import, model=model).summary


__all__ = ["train", "resume", "evaluate_run", "load_model", "predict_images", "kept_weights", "checkpoint_path",
           "check_data_fits", "TrainResult", "Session", "Callback", "make_loaders", "seed_everything"]
