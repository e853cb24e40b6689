"""Export a trained model as safetensors (weights only, no code, loadable anywhere) plus its
metadata beside it (model.safetensors.json, schema in export/exported.py): the model spec,
class names, mean/std, what data it was trained on."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from trainlab._version import __version__
from trainlab.data.idx import read_idx
from trainlab.data.npy import read_npy
from trainlab.errors import ConfigError, TrainlabError
from trainlab.export.exported import export_metadata
from trainlab.export.onnx_export import export_onnx
from trainlab.inference import checkpoint_path, load_model
from trainlab.store import runs
from trainlab.store.atomic import atomic_write_bytes, atomic_write_text, write_error
from trainlab.store.exported import sidecar


def export_run(path_or_run: str | Path, out_dir: str | Path | None = None, allow_import=(), *,
               format: str = "safetensors", data=None, data_dir=None) -> tuple[Path, Path]:
    """model.safetensors + model.safetensors.json (default), or with format="onnx" model.onnx +
    model.onnx.json after a parity check on the run's test split (`data=` for a run trained on arrays)."""
    if format not in ("safetensors", "onnx"):
        raise ConfigError(f"export format {format!r} is invalid: choose safetensors or onnx")
    save = None
    if format == "safetensors":
        try:
            from safetensors.torch import save
        except ImportError:
            raise TrainlabError("export needs safetensors: pip install 'trainlab[export]'") from None
    src = checkpoint_path(path_or_run)
    out = Path(out_dir) if out_dir else (Path(path_or_run) if Path(path_or_run).is_dir() else src.parent)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out} is a file: export writes two files, so give a folder")
    model, ckpt = load_model(src, map_location="cpu", allow_import=allow_import)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, e) from None
    owner = runs.owning_run(out)
    with (runs.RunLock(owner) if owner is not None else contextlib.nullcontext()):
        if format == "onnx":  # onnx and onnxruntime are imported only now (onnx_guard._need)
            return export_onnx(model, ckpt, src, out, data, data_dir)[:2]
        return _write_export(model, ckpt, src, out, save)


def _write_export(model, ckpt: dict, src: Path, out: Path, save) -> tuple[Path, Path]:
    # safetensors refuses non-contiguous views (e.g. channels_last): copy them contiguous first
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weights = out / "model.safetensors"
    meta = sidecar(weights)
    # the metadata first: weights without it cannot be used, metadata without weights is harmless
    atomic_write_text(meta, json.dumps(export_metadata(ckpt, src, "safetensors", weights.name), indent=2) + "\n")
    atomic_write_bytes(weights, save(tensors, metadata={"format": "trainlab", "model": ckpt["model_spec"]["name"],
                                                        "trainlab_version": __version__}))
    return weights, meta


def read_array_file(path: str | Path) -> torch.Tensor:
    """Images from an IDX (.gz or raw) or .npy file as N,C,H,W (uint8 or float32)."""
    path = Path(path)
    if path.suffix == ".npy":
        arr = read_npy(path)  # header checked against the file first; never a pickle
    else:
        arr = read_idx(path)
    if arr.dtype.kind not in "uif":
        raise TrainlabError(f"{path}: holds {arr.dtype} values, not pixel numbers")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise TrainlabError(f"{path}: expected images shaped N,H,W or N,C,H,W, got {arr.shape}")
    if arr.size == 0:
        raise TrainlabError(f"{path} holds no pixels (shape {arr.shape}): nothing to predict")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise TrainlabError(f"{path} has NaN or infinite pixel values: fix the file first")
    t = torch.from_numpy(np.array(arr, copy=True))
    return t if t.dtype == torch.uint8 else t.float()
