"""Inference, in one place: run a model over a loader, load a trained model from a file,
evaluate a checkpoint on its data, predict images. Training's per-epoch and final
evaluation, `trainlab evaluate`, report and export all go through here, so a number means
the same wherever it is printed."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainlab.data import Dataset, DeviceLoader, data_matches, data_options, load_dataset
from trainlab.devices import check_same_device, pick_device
from trainlab.errors import TrainlabError
from trainlab.metrics import summarize
from trainlab.models import build_from_spec
from trainlab.store.checkpoint import check_compatible
from trainlab.store.safeload import CheckpointError
from trainlab.store.schema import check_checkpoint, load_checkpoint
from trainlab.store.runs import CHECKPOINTS, WEIGHTS_FILE
from trainlab.store.exported import load_safetensors

log = logging.getLogger("trainlab")

EVAL_BATCH = 1024  # evaluation keeps no activations for backward: bigger batches are free


@torch.inference_mode()
def predict(model: nn.Module, loader, tta_flip: bool = False, autocast=None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for a whole loader, in loader order, on the loader's device.

    `autocast` (a context manager, e.g. Precision.autocast) evaluates in the training precision."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for x, y in loader:
            with autocast or contextlib.nullcontext():
                out = model(x)
                if tta_flip:
                    out = (out.float().softmax(1) + model(x.flip(3)).float().softmax(1)).div_(2).log_()
            logits.append(out.float())
            labels.append(y)
    finally:
        model.train(was_training)
    if not logits:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, loader, tta_flip: bool = False, reduce=None, autocast=None) -> dict:
    """{"loss", "acc", "n"} over a loader (plain cross-entropy, so runs compare).

    `reduce` sums across processes (DDP: each rank evaluates its shard of the split)."""
    check_same_device(model, loader.device)
    logits, labels = predict(model, loader, tta_flip, autocast)
    sums = torch.stack([nn.functional.cross_entropy(logits, labels, reduction="sum"),
                        (logits.argmax(1) == labels).sum().float(),
                        torch.tensor(float(len(labels)), device=logits.device)]) if len(labels) else \
        torch.zeros(3, device=loader.device)
    if reduce is not None:
        sums = reduce(sums)
    loss_sum, correct, n = sums.tolist()
    if n == 0:
        return {"loss": float("nan"), "acc": float("nan"), "n": 0}
    return {"loss": loss_sum / n, "acc": correct / n, "n": int(n)}


def summarize_model(model: nn.Module, loader, classes, tta_flip: bool = False) -> dict:
    """metrics.summarize() of a model over a whole loader, in float32 (as evaluate recomputes it)."""
    logits, labels = predict(model, loader, tta_flip)
    return summarize(logits, labels, classes)


# ---------------------------------------------------------------- trained models from files

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


def load_model(path_or_run: str | Path, map_location=None, allow_import=(), model=None) -> tuple[nn.Module, dict]:
    """Rebuild a trained model from a checkpoint file or run folder, on the current device.

    Returns (model in eval mode, checkpoint dict). A model.safetensors export is rebuilt from
    the metadata beside it (its checkpoint dict holds model_spec, classes, mean, std). Only registered model names are built;
    a `module:function` spec needs that module in `allow_import`. `model` (an nn.Module, or the
    class or function it was built by) receives the weights instead: what a run trained on a
    model given in memory (train(model=...)) needs.
    """
    path = checkpoint_path(path_or_run)
    if path.suffix == ".safetensors":  # an export: weights + model.safetensors.json (export/exported.py)

        return load_safetensors(path, map_location, allow_import, model)
    if path.suffix == ".onnx":
        raise TrainlabError(f"{path} is an ONNX graph, run by ONNX Runtime, not a PyTorch model: use "
                            "`trainlab predict` or trainlab.analysis.prediction.open_model, or load the "
                            "model.safetensors export")
    device = pick_device("auto") if map_location is None else pick_device(str(map_location))
    ckpt = check_checkpoint(load_checkpoint(path, map_location=device), path)
    weights = kept_weights(ckpt)
    model = build_from_spec(ckpt["model_spec"], tuple(allow_import or ()), str(path), weights=weights, model=model)
    check_compatible(model, weights, str(path))  # by name and shape, in one sentence
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit its own model spec ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), ckpt


def check_data_fits(ckpt: dict, data: Dataset, source) -> None:
    """The data must have the model's image shape and class count, said in one sentence."""
    spec = ckpt["model_spec"]
    if tuple(data.input_shape) != tuple(spec["input_shape"]) or data.num_classes != spec["num_classes"]:
        raise TrainlabError(f"{source}: its model takes {tuple(spec['input_shape'])} images and "
                            f"{spec['num_classes']} classes, but the data set {data.name} has "
                            f"{tuple(data.input_shape)} images and {data.num_classes} classes")


@dataclass
class CheckpointEvaluation:
    model: nn.Module
    ckpt: dict
    data: Dataset
    logits: torch.Tensor  # float32, test split order, on the evaluation device
    labels: torch.Tensor
    summary: dict  # metrics.summarize()
    data_matches: bool | None  # the data is what the model was trained on (None: unknown)


def evaluate_checkpoint(path_or_run: str | Path, *, data: Dataset | None = None, data_dir=None,
                        device: str = "auto", allow_import=(), what: str = "evaluate",
                        model=None, open_graph=None) -> CheckpointEvaluation:
    """A trained model's predictions and per-class results on its data set's test split.

    `open_graph` (analysis.prediction.open_model) opens a model.onnx: analysis lives above here."""
    dev = pick_device(device)
    graph = None
    if Path(path_or_run).suffix == ".onnx":  # run by ONNX Runtime in its child process: no nn.Module
        if open_graph is None:
            raise TrainlabError(f"{path_or_run}: evaluate a model.onnx with trainlab.analysis.evaluation")
        graph = open_graph(path_or_run)
        model, ckpt = None, graph.ckpt
    else:
        model, ckpt = load_model(path_or_run, map_location=dev, allow_import=allow_import, model=model)
    if data is None:
        if not ckpt["config"].get("dataset"):
            raise TrainlabError(f"{path_or_run} does not say which data set it was trained on (exported before "
                                "trainlab wrote it): re-export it from its run")
        data = load_dataset(ckpt["config"]["dataset"], data_dir, **data_options(ckpt["config"]))
    check_data_fits(ckpt, data, path_or_run)
    matches = data_matches(data, ckpt.get("fingerprint"))
    if matches is False:
        log.warning("%s: the data differs from what this model was trained with "
                    "(split hashes do not match)", what)
    classes = list(data.classes)
    if ckpt.get("classes") and list(ckpt["classes"]) != classes:
        log.warning("%s: the checkpoint's class names differ from the data's; using the data's", what)
    if graph is not None:  # log-probabilities: the same argmax, loss and softmax as logits
        logits, labels = graph.probabilities(data.test_x).clamp_min(1e-45).log(), data.test_y
    else:
        loader = DeviceLoader(data.test_x, data.test_y, EVAL_BATCH, mean=ckpt["mean"], std=ckpt["std"], device=dev)
        logits, labels = predict(model, loader, ckpt["config"].get("tta_flip", False))
    return CheckpointEvaluation(model, ckpt, data, logits, labels, summarize(logits, labels, classes), matches)


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
