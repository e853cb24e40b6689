"""The library's front: train, resume, load and evaluate runs.

The CLI is a thin layer over these calls; a notebook or script uses them the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from trainlab.data import Dataset, DeviceLoader, load_dataset
from trainlab.errors import TrainlabError
from trainlab.metrics import summarize
from trainlab.store.checkpoint import CheckpointError, check_compatible, check_fields, load_checkpoint
from trainlab.training.loop import pick_device, predict
from trainlab.training.session import (
    CHECKPOINTS,
    EVAL_BATCH,
    WEIGHTS_FILE,
    Session,
    TrainResult,
    build_model,
    make_loaders,
    resume,
    seed_everything,
    train,
)

log = logging.getLogger("trainlab")


def checkpoint_path(path_or_run: str | Path) -> Path:
    """A run folder means its final model (model.pt), else its newest checkpoint."""
    path = Path(path_or_run)
    if path.is_dir():
        if (path / WEIGHTS_FILE).is_file():
            return path / WEIGHTS_FILE
        for name in ("best.pt", "last.pt"):
            if (path / CHECKPOINTS / name).is_file():
                return path / CHECKPOINTS / name
    return path


def kept_weights(ckpt: dict) -> dict:
    """The weights a run evaluates and keeps: the EMA average when the run used EMA
    (AveragedModel keys are "module."-prefixed, plus its n_averaged counter)."""
    ema = ckpt.get("ema")
    if not isinstance(ema, dict) or not ema:
        return ckpt["model"]
    return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}


def load_model(path_or_run: str | Path, map_location=None, allow_import=()) -> tuple[nn.Module, dict]:
    """Rebuild a trained model from a checkpoint file or run folder, on the current device.

    Returns (model in eval mode, checkpoint dict). Only registered model names are built;
    a `module:function` spec needs that module in `allow_import`.
    """
    device = pick_device("auto") if map_location is None else pick_device(str(map_location))
    path = checkpoint_path(path_or_run)
    ckpt = check_fields(load_checkpoint(path, map_location=device), path)
    model = build_model(ckpt["model_spec"], allow_import=tuple(allow_import or ()), source=str(path))
    weights = kept_weights(ckpt)
    check_compatible(model, weights, str(path))  # by name and shape, in one sentence
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit its own model spec ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), ckpt


def evaluate_run(path_or_run: str | Path, *, data: Dataset | None = None, data_dir=None,
                 device: str = "auto", allow_import=()) -> dict:
    """Per-class test results of a finished run (or checkpoint) on its data set."""
    dev = pick_device(device)
    model, ckpt = load_model(path_or_run, map_location=dev, allow_import=allow_import)
    if data is None:
        data = load_dataset(ckpt["config"]["dataset"], data_dir)
    check_data_fits(ckpt, data, path_or_run)
    stored = ckpt.get("fingerprint") or {}
    if any(data.hashes.get(k) != v for k, v in stored.items() if k in data.hashes):
        log.warning("evaluate: the data differs from what this model was trained with "
                    "(split hashes do not match)")
    loader = DeviceLoader(data.test_x, data.test_y, EVAL_BATCH, mean=ckpt["mean"], std=ckpt["std"], device=dev)
    logits, labels = predict(model, loader, ckpt["config"].get("tta_flip", False))
    return summarize(logits, labels, data.classes)


def check_data_fits(ckpt: dict, data: Dataset, source) -> None:
    """The data must have the model's image shape and class count, said in one sentence."""
    spec = ckpt["model_spec"]
    if tuple(data.input_shape) != tuple(spec["input_shape"]) or data.num_classes != spec["num_classes"]:
        raise TrainlabError(f"{source}: its model takes {tuple(spec['input_shape'])} images and "
                            f"{spec['num_classes']} classes, but the data set {data.name} has "
                            f"{tuple(data.input_shape)} images and {data.num_classes} classes")


def predict_images(model: nn.Module, ckpt: dict, images: torch.Tensor, batch_size: int = EVAL_BATCH
                   ) -> torch.Tensor:
    """Class probabilities for N,C,H,W images (uint8 0-255 or float), normalized as in training."""
    device = next(model.parameters()).device
    expected = tuple(ckpt["model_spec"]["input_shape"])
    if tuple(images.shape[1:]) != expected:
        raise TrainlabError(f"the images are {tuple(images.shape[1:])} but the model expects {expected} (C,H,W)")
    labels = torch.zeros(len(images), dtype=torch.long)
    loader = DeviceLoader(images, labels, batch_size, mean=ckpt["mean"], std=ckpt["std"], device=device)
    logits, _ = predict(model, loader, ckpt.get("config", {}).get("tta_flip", False))
    return logits.softmax(1).cpu()


__all__ = ["predict_images", "kept_weights", "TrainResult", "Session", "train", "resume", "load_model", "evaluate_run", "make_loaders",
           "build_model", "seed_everything", "checkpoint_path"]
