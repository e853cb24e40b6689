"""The metadata of an exported model, one schema for both forms, and the safetensors form
read back into a model.

Each export writes its artifact and, beside it, the artifact's name + ".json"
(model.safetensors.json, model.onnx.json; the ONNX graph also carries the same table inside).
Schema 1 (every field trainlab reads is checked as a checkpoint's are: check_fields):

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

from trainlab.errors import TrainlabError
from trainlab.store.exported import (LEGACY_META, SCHEMA, as_checkpoint, load_safetensors,  # noqa: F401
                                     read_json_meta, read_safetensors, safetensors_meta, sidecar)


def export_metadata(ckpt: dict, src: Path, fmt: str, file_name: str) -> dict:
    """The schema-1 table of a checkpoint exported as `fmt`."""
    from trainlab.analysis.export import input_policy
    from trainlab._version import __version__
    from trainlab.data import data_options

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


def describe_export(path: str | Path) -> list[str]:
    """`trainlab inspect` of a model.safetensors or model.onnx: the metadata, checked, and
    the tensors (safetensors) or operators (ONNX)."""
    from collections import Counter

    from trainlab.analysis.tables import table

    path = Path(path)
    out = [f"file      {path} ({path.stat().st_size / 2**20:.2f} MiB)"]
    if path.suffix == ".onnx":
        from trainlab.analysis.onnx_export import _checked, _need

        blob, meta, batch = _checked(path)
        where, onnx = "inside the graph (checked by onnx_guard)", _need("onnx")
        ops = Counter(n.op_type for n in onnx.load_from_string(blob).graph.node)
    else:
        meta, where = safetensors_meta(path)
        weights = read_safetensors(path)
    ckpt = as_checkpoint(meta, where)
    spec, pre = ckpt["model_spec"], meta.get("preprocessing") or {}
    out += [f"kind      trainlab export, {meta.get('format', 'safetensors')} (metadata schema "
            f"{meta.get('schema', 'before 1')}, {where})",
            f"model     {spec.get('name')} {spec.get('kwargs') or ''} input {spec.get('input_shape')} "
            f"classes {spec.get('num_classes')}",
            f"classes   {', '.join(ckpt['classes'][:20])}{' ...' if len(ckpt['classes']) > 20 else ''}",
            f"normalize mean {ckpt['mean']} std {ckpt['std']}, flip TTA {ckpt['config']['tta_flip']}"
            + (" (inside the graph)" if pre.get("inside_the_graph") else ""),
            f"data      {ckpt['config'].get('dataset') or 'not recorded'}",
            f"exported  by trainlab {meta.get('trainlab_version')} from {meta.get('source')}"]
    if path.suffix == ".onnx":
        p = meta.get("parity")
        if p is None and sidecar(path).is_file():  # measured after the graph was made: in its .json
            try:
                p = read_json_meta(sidecar(path)).get("parity")
            except (TrainlabError, AttributeError):
                p = None
        p = p if isinstance(p, dict) else {}
        out += [f"opset     {meta.get('opset')}; exporter {meta.get('exporter', 'torchscript')}; runs "
                f"{batch} images at a time",
                f"parity    argmax agreement {p.get('argmax_agreement')}, max probability difference "
                f"{p.get('max_prob_diff')} on {p.get('images')} test images",
                "", table(["operator", "count"], [[k, v] for k, v in sorted(ops.items())])]
    else:
        out.append(f"weights   {_fit(ckpt, weights, path)}")
        rows = [[k, "x".join(map(str, v.shape)) or "scalar", f"{v.numel():,}", str(v.dtype).replace("torch.", "")]
                for k, v in weights.items()]
        out += ["", f"tensors ({len(rows)}, {sum(v.numel() for v in weights.values()):,} values)",
                table(["name", "shape", "count", "dtype"], rows, "lrrl")]
    return out


def _fit(ckpt: dict, weights: dict, path: Path) -> str:
    """Whether the weights fit the model the metadata names (inspect shows a mismatch, not stops)."""
    from trainlab.models import build_from_spec
    from trainlab.store.checkpoint import check_compatible

    try:
        net = build_from_spec(ckpt["model_spec"], (), str(path), weights=weights)
    except TrainlabError as e:  # e.g. a user's model, not registered in this process
        return f"not checked against the model ({e})"
    try:
        check_compatible(net, weights, str(path))
    except TrainlabError as e:
        return f"DO NOT FIT the metadata's model: {e}"
    return "fit the metadata's model"
