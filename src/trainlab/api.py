"""The library's front: train a configured run end to end, evaluate a finished one.

The CLI is a thin layer over these calls; a notebook or script uses them the same way.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checkpoint, models, runs
from .config import Config, resolve
from .data import Dataset, DeviceLoader, load_dataset, stratified_split
from .engine import (FitState, build_optimizer, build_scheduler, describe_device, fit,
                     pick_device, predict)
from .errors import ConfigError, TrainlabError
from .metrics import summarize

log = logging.getLogger("trainlab")

EVAL_BATCH = 1024  # evaluation holds no activations for backward: bigger batches are free
WEIGHTS_FILE = "model.pt"


@dataclass
class TrainResult:
    run_dir: Path
    config: Config
    history: list[dict]
    test: dict  # metrics.summarize() of the final model on the test split
    device: str

    @property
    def test_accuracy(self) -> float:
        return self.test["accuracy"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def make_loaders(data: Dataset, cfg: Config, device) -> dict[str, DeviceLoader]:
    """Train / val / test loaders on `device`; val is carved from the training split."""
    n_train = len(data.train_y)
    if cfg.val_size >= n_train:
        raise ConfigError(f"val_size = {cfg.val_size} is invalid: the training split has only "
                          f"{n_train} samples")
    train_idx, val_idx = stratified_split(data.train_y, cfg.val_size, cfg.seed)
    if cfg.train.batch_size > len(train_idx):
        raise ConfigError(f"batch_size = {cfg.train.batch_size} is invalid: larger than the "
                          f"{len(train_idx)} training samples")
    common = dict(mean=data.mean, std=data.std, device=device)
    return {
        "train": DeviceLoader(data.train_x[train_idx], data.train_y[train_idx], cfg.train.batch_size,
                              shuffle=True, seed=cfg.seed, **common),
        "val": DeviceLoader(data.train_x[val_idx], data.train_y[val_idx], EVAL_BATCH, **common),
        "test": DeviceLoader(data.test_x, data.test_y, EVAL_BATCH, **common),
    }


def model_spec(cfg: Config, data: Dataset) -> dict:
    return {"name": cfg.model, "kwargs": dict(cfg.model_kwargs),
            "input_shape": list(data.input_shape), "num_classes": data.num_classes}


def build_model(spec: dict, allow_import=None) -> nn.Module:
    return models.build(spec["name"], spec["input_shape"], spec["num_classes"],
                        allow_import=allow_import, **spec.get("kwargs", {}))


def train(config: Config | dict | None = None, *, data: Dataset | None = None,
          progress: bool | None = None) -> TrainResult:
    """Train one run as configured; returns the history and the final test summary."""
    cfg = config if isinstance(config, Config) else resolve(config or {})
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_dir)
    loaders = make_loaders(data, cfg, device)
    spec = model_spec(cfg, data)
    model = build_model(spec).to(device)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, len(loaders["train"]))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)

    run_dir = runs.create_run_dir(cfg)
    runs.write_run_header(run_dir, cfg, {
        "device": describe_device(device), "data_source": data.source,
        "data_fingerprint": data.fingerprint(), "classes": data.classes,
        "model_spec": spec, "parameters": models.count_parameters(model)})
    log.info("run: %s | model %s (%s parameters) | recipe %s | device %s", run_dir, cfg.model,
             f"{models.count_parameters(model):,}", cfg.recipe, describe_device(device))

    def on_epoch_end(state: FitState) -> None:
        row = state.history[-1]
        runs.append_metrics(run_dir, row)
        if not cfg.quiet:
            log.info("epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | "
                     "test acc %.4f | %.1fs", row["epoch"], cfg.train.epochs, row["train_loss"],
                     row["train_acc"], row.get("val_loss", float("nan")),
                     row.get("val_acc", float("nan")), row.get("test_acc", float("nan")),
                     row["train_seconds"])

    state = fit(model, optimizer, loaders["train"], epochs=cfg.train.epochs, scheduler=scheduler,
                val_loader=loaders["val"], test_loader=loaders["test"], loss_fn=loss_fn,
                grad_clip=cfg.train.grad_clip, on_epoch_end=on_epoch_end,
                progress=(not cfg.quiet) if progress is None else progress,
                tta_flip=cfg.train.tta_flip)

    logits, labels = predict(model, loaders["test"], cfg.train.tta_flip)
    test = summarize(logits, labels, data.classes)
    checkpoint.save_checkpoint(run_dir / WEIGHTS_FILE, checkpoint.make_checkpoint(
        model, model_spec=spec, classes=data.classes, mean=data.mean, std=data.std,
        config=cfg.to_dict(), epoch=state.epoch, global_step=state.global_step,
        fingerprint=data.fingerprint()))
    seconds = [r["train_seconds"] for r in state.history]
    results = {"test": test, "epochs": state.epoch, "device": describe_device(device),
               "seconds_per_epoch": sum(seconds) / len(seconds), "total_seconds": sum(r["seconds"] for r in state.history)}
    runs.write_json(run_dir / runs.RESULTS_FILE, results)
    return TrainResult(run_dir, cfg, state.history, test, describe_device(device))


def load_model(path_or_run: str | Path, map_location=None, allow_import=()) -> tuple[nn.Module, dict]:
    """Rebuild a trained model from a checkpoint file or run folder, on the current device.

    Returns (model in eval mode, checkpoint dict). Only registered model names are built;
    a `module:function` spec needs that module in `allow_import`.
    """
    path = Path(path_or_run)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    device = pick_device("auto") if map_location is None else torch.device(map_location)
    ckpt = checkpoint.load_checkpoint(path, map_location=device)
    model = build_model(ckpt["model_spec"], allow_import=tuple(allow_import))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def evaluate_run(path_or_run: str | Path, *, data: Dataset | None = None, data_dir=None,
                 device: str = "auto") -> dict:
    """Per-class test results of a finished run (or checkpoint) on its data set."""
    dev = pick_device(device)
    model, ckpt = load_model(path_or_run, map_location=dev)
    if data is None:
        data = load_dataset(ckpt["config"]["dataset"], data_dir)
    if data.hashes and ckpt.get("fingerprint"):
        stored = {k: v for k, v in ckpt["fingerprint"].items() if k.endswith(("images", "labels"))}
        if stored and any(data.hashes.get(k) != v for k, v in stored.items()):
            log.warning("evaluate: the data differs from what this model was trained with "
                        "(split hashes do not match)")
    loader = DeviceLoader(data.test_x, data.test_y, EVAL_BATCH, mean=ckpt["mean"], std=ckpt["std"], device=dev)
    logits, labels = predict(model, loader, ckpt["config"].get("tta_flip", False))
    return summarize(logits, labels, data.classes)


__all__ = ["TrainResult", "train", "load_model", "evaluate_run", "make_loaders", "build_model",
           "seed_everything", "TrainlabError"]
