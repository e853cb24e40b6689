"""The metadata of an exported model, one schema for both forms, as an export writes it (the
safetensors form is read back into a model by trainlab.store.exported, below inference).

Each export writes its artifact and, beside it, the artifact's name + ".json"
(model.safetensors.json, model.onnx.json; the ONNX graph also carries the same table inside).
Schema 1 (every field trainlab reads is checked as a checkpoint's are: check_checkpoint):

    schema          1
    format          "safetensors" or "onnx"
    file            the artifact's file name
    model_spec      {name, kwargs, input_shape [C,H,W], num_classes}
    classes         class names, in output order
    preprocessing   {formula, mean, std (per channel), tta_flip, inside_the_graph}
    input, output   name, dtype, shape, meaning
    image_files     how an image file becomes the model's input (channels, size, crop)
    data            {dataset, options, fingerprint}: the data the model was trained on
    trainlab_version, source; and for ONNX opset, exporter, parity

Exports made before schema 1 wrote one model.json per folder (the second export overwrote
the first); it is still read when no sidecar is there.
"""

from __future__ import annotations

from pathlib import Path

from trainlab._version import __version__
from trainlab.data import data_options
from trainlab.store.exported import SCHEMA


def export_metadata(ckpt: dict, src: Path, fmt: str, file_name: str) -> dict:
    """The schema-1 table of a checkpoint exported as `fmt`."""
    spec = ckpt["model_spec"]
    config = ckpt.get("config") or {}
    classes = ckpt.get("classes") or [str(i) for i in range(spec["num_classes"])]
    onnx = fmt == "onnx"
    return {
        "schema": SCHEMA, "format": fmt, "file": file_name, "model_spec": spec, "classes": list(classes),
        "preprocessing": {"formula": "(x / 255 - mean) / std", "mean": ckpt.get("mean"), "std": ckpt.get("std"),
                          "tta_flip": bool(config.get("tta_flip", False)), "inside_the_graph": onnx},
        "input": ({"name": "images", "dtype": "uint8", "shape": ["N", *spec["input_shape"]],
                   "layout": "N,C,H,W, pixel values 0-255"} if onnx else
                  {"dtype": "float32", "shape": ["N", *spec["input_shape"]],
                   "layout": "N,C,H,W, after preprocessing"}),
        "output": ({"name": "probabilities", "dtype": "float32", "shape": ["N", spec["num_classes"]],
                    "meaning": "class probabilities (softmax), in the order of classes"} if onnx else
                   {"dtype": "float32", "shape": ["N", spec["num_classes"]],
                    "meaning": "logits (softmax gives the probabilities), in the order of classes"}),
        "image_files": input_policy(ckpt),
        "data": {"dataset": config.get("dataset"), "options": data_options(config),
                 "fingerprint": ckpt.get("fingerprint")},
        "trainlab_version": __version__, "source": str(src),
    }


def input_policy(ckpt: dict) -> dict:
    """How an image file becomes the model's input, as training read it (trainlab.data.folder)."""
    c, h, w = ckpt["model_spec"]["input_shape"]
    size = (ckpt.get("config") or {}).get("image_size")
    return {"channels": c, "height": h, "width": w, "image_size": size,
            "color": "grey (L)" if c == 1 else "RGB" if c == 3 else f"{c} channels",
            "resize": (f"shorter side to {size}, centre crop {size}x{size}" if size else
                       f"scale to cover {w}x{h} (shorter side first), centre crop") + ", bilinear",
            "scale": "uint8 pixel / 255, then (x - mean) / std per channel", "layout": "N,C,H,W"}
