"""One predict for every form of a trained model trainlab writes: a run folder, a checkpoint,
model.pt, model.safetensors (+ its .json) and model.onnx (run by ONNX Runtime in a child
process, after onnx_guard's checks).

Inputs are image files, folders of them (decoded by trainlab.data.folder's safe decoder, with
the training's channel and size policy), and IDX / .npy arrays. They are read and classified
in chunks (at most CHUNK_BYTES of pixels, CHUNK_IMAGES images), so a folder of any size is
never decoded at once. A folder whose images all lie in subfolders named after the model's
classes is labelled: the results count accuracy, per class, and a confusion matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainlab.errors import ConfigError, TrainlabError
from trainlab.data import data_options, load_dataset
from trainlab.data.folder import EXTENSIONS
from trainlab.data.folder import image_files
from trainlab.data.folder import read_images as read_image_files
from trainlab.export.export import read_array_file as read_array
from trainlab.export.onnx_export import _checked
from trainlab.export.onnx_export import run_graph
from trainlab.export.onnx_run import DEFAULT_TIMEOUT
from trainlab.inference import check_data_fits
from trainlab.inference import load_model
from trainlab.inference import predict_images
from trainlab.metrics import most_confused, nanmean, normalize_rows, per_class_accuracy, precision_recall_f1
from trainlab.store.exported import as_checkpoint

CHUNK_BYTES = 64 << 20  # pixels held at once (uint8): a folder of any size streams through this
CHUNK_IMAGES = 4096


@dataclass
class TrainedModel:
    """A trained model in any form: `probabilities(images)` for N,C,H,W images."""
    path: Path
    kind: str  # "checkpoint", "safetensors" or "onnx"
    ckpt: dict  # model_spec, classes, mean, std, config (dataset, tta_flip, data options), fingerprint
    classes: list[str]
    net: torch.nn.Module | None = None
    onnx: tuple | None = None  # (bytes, batch) of a checked model.onnx
    timeout: float | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.ckpt["model_spec"]["input_shape"])

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """N x classes float32 probabilities on the CPU."""

        if tuple(images.shape[1:]) != self.input_shape:
            raise TrainlabError(f"the images are {tuple(images.shape[1:])} but the model expects "
                                f"{self.input_shape} (C,H,W)")
        if self.onnx is None:
            return predict_images(self.net, self.ckpt, images)

        if images.dtype != torch.uint8:
            raise TrainlabError("the ONNX model takes uint8 images (0-255); these are float")
        blob, batch = self.onnx
        return torch.from_numpy(run_graph(blob, images, len(self.classes), self.timeout or DEFAULT_TIMEOUT,
                                          str(self.path), batch=batch))


def open_model(path: str | Path, device: str = "auto", allow_import=(), timeout: float | None = None
               ) -> TrainedModel:
    """A run folder, checkpoint, model.pt, model.safetensors or model.onnx, ready to predict."""

    path = Path(path)  # a missing file: each form's own reader says so
    if path.suffix == ".onnx":
        blob, meta, batch = _checked(path)
        ckpt = as_checkpoint(meta, path)
        return TrainedModel(path, "onnx", ckpt, list(ckpt["classes"]), onnx=(blob, batch), timeout=timeout)
    net, ckpt = load_model(path, map_location=None if device == "auto" else device, allow_import=allow_import)
    classes = ckpt.get("classes") or [str(i) for i in range(ckpt["model_spec"]["num_classes"])]
    return TrainedModel(path, "safetensors" if path.suffix == ".safetensors" else "checkpoint", ckpt,
                        list(classes), net=net)


# ---------------------------------------------------------------- inputs, in chunks

@dataclass
class Chunk:
    names: list[str]
    images: torch.Tensor  # N,C,H,W uint8 (or float from an array file)
    labels: torch.Tensor | None  # class indices of the model, when the input is labelled


def _chunk_size(shape) -> int:
    c, h, w = shape
    return max(1, min(CHUNK_IMAGES, CHUNK_BYTES // max(1, c * h * w)))


def _is_array(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() not in EXTENSIONS


def labelled_folder(inputs: list[Path], files: list[Path], classes: list[str]) -> list[int] | None:
    """Class indices of `files` when every input is a folder and every image lies in a
    subfolder named after one of the model's classes; else None (unlabelled)."""
    if not inputs or not all(p.is_dir() for p in inputs):
        return None
    index = {c: i for i, c in enumerate(classes)}
    labels = []
    for f in files:
        root = next((p for p in inputs if f.is_relative_to(p)), None)
        parts = f.relative_to(root).parts if root is not None else ()
        if len(parts) < 2 or parts[0] not in index:
            return None
        labels.append(index[parts[0]])
    return labels


def chunks(inputs, model: TrainedModel, limit: int | None = None) -> Iterator[Chunk]:
    """The named inputs as chunks of images, in order, at most `limit` images in all."""

    c, h, w = model.input_shape
    size = _chunk_size(model.input_shape)
    left = limit if limit is not None else float("inf")
    items = [Path(p).expanduser() for p in inputs]  # as image_files names them
    arrays = [p for p in items if _is_array(p)]
    pictures = [p for p in items if p not in arrays]
    files = image_files(pictures) if pictures else []  # paths only: nothing decoded yet
    folders = [p for p in pictures if p.is_dir()]
    labels = labelled_folder(folders, files, model.classes) if folders == pictures else None
    for start in range(0, len(files), size):
        if left <= 0:
            return
        part = files[start: start + int(min(size, left))]
        left -= len(part)
        yield Chunk([str(p) for p in part], read_image_files(part, c, w, h),
                    None if labels is None else torch.tensor(labels[start: start + len(part)]))
    for p in arrays:
        x = read_array(p)
        many = len(x) > 1
        for start in range(0, len(x), size):
            if left <= 0:
                return
            part = x[start: start + int(min(size, left))]
            left -= len(part)
            yield Chunk([f"{p}[{start + i}]" if many else str(p) for i in range(len(part))], part, None)


def test_split_chunks(model: TrainedModel, limit: int | None, data_dir=None, data=None) -> Iterator[Chunk]:
    """The model's own data set's test split (labelled), as the run read it."""
    x, y = test_split(model, data_dir, data)
    size = _chunk_size(model.input_shape)
    n = len(x) if limit is None else min(limit, len(x))
    for start in range(0, n, size):
        end = min(n, start + size)
        yield Chunk([str(i) for i in range(start, end)], x[start:end], y[start:end])


def test_split(model: TrainedModel, data_dir=None, data=None):
    if data is None:
        dataset = model.ckpt["config"].get("dataset")
        if not dataset:
            raise ConfigError(f"{model.path} does not say which data set it was trained on (exported before "
                              "trainlab wrote it): re-export it from its run, or name image files to predict")
        data = load_dataset(dataset, data_dir, **data_options(model.ckpt["config"]))
    check_data_fits(model.ckpt, data, model.path)
    return data.test_x, data.test_y


# ---------------------------------------------------------------- results, counted as they stream

@dataclass
class Tally:
    """What labelled predictions add up to, without keeping them: a confusion matrix and the
    summed loss (-log p of the true class)."""
    classes: list[str]
    cm: torch.Tensor = field(init=False)
    loss_sum: float = 0.0

    def __post_init__(self):
        k = len(self.classes)
        self.cm = torch.zeros(k, k, dtype=torch.long)

    def add(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        k = len(self.classes)
        self.cm += torch.bincount(labels * k + probs.argmax(1), minlength=k * k).reshape(k, k)
        self.loss_sum += float(-probs.gather(1, labels[:, None]).clamp_min(1e-45).log().sum())

    def summary(self) -> dict:
        """metrics.summarize()'s table, from the counts."""

        cm, n = self.cm, int(self.cm.sum())
        prf = precision_recall_f1(cm)
        return {"n": n, "accuracy": float(cm.diag().sum()) / n if n else float("nan"),
                "loss": self.loss_sum / n if n else float("nan"),
                "per_class": [{"class": c, "accuracy": a, "precision": p, "recall": r, "f1": f, "support": int(s)}
                              for c, a, p, r, f, s in zip(self.classes, per_class_accuracy(cm), prf["precision"],
                                                          prf["recall"], prf["f1"], cm.sum(1).tolist())],
                "macro": {key: nanmean(prf[key]) for key in ("precision", "recall", "f1")},
                "confusion_matrix": cm.tolist(), "confusion_matrix_normalized": normalize_rows(cm).tolist(),
                "most_confused": most_confused(cm, self.classes)}


def predict_stream(model: TrainedModel, source: Iterator[Chunk]) -> Iterator[tuple[Chunk, torch.Tensor]]:
    """(chunk, its probabilities) for each chunk, in order."""
    for chunk in source:
        yield chunk, model.probabilities(chunk.images)
