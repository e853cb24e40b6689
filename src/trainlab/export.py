"""Export a trained model as safetensors (weights only, no code, loadable anywhere) plus a
small JSON with what is needed to use it: the model spec, class names, mean/std."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .api import checkpoint_path, load_model
from .errors import TrainlabError


def export_run(path_or_run: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise TrainlabError("export needs safetensors: pip install 'trainlab[export]'") from None
    src = checkpoint_path(path_or_run)
    model, ckpt = load_model(src, map_location="cpu")
    out = Path(out_dir) if out_dir else (Path(path_or_run) if Path(path_or_run).is_dir() else src.parent)
    out.mkdir(parents=True, exist_ok=True)
    # safetensors refuses non-contiguous views (e.g. channels_last): copy them contiguous first
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weights = out / "model.safetensors"
    save_file(tensors, str(weights), metadata={"format": "trainlab", "model": ckpt["model_spec"]["name"]})
    meta = out / "model.json"
    meta.write_text(json.dumps({"model_spec": ckpt["model_spec"], "classes": ckpt.get("classes"),
                                "mean": ckpt.get("mean"), "std": ckpt.get("std"),
                                "trainlab_version": __version__, "source": str(src)}, indent=2) + "\n")
    return weights, meta


def read_images(path: str | Path) -> torch.Tensor:
    """Images from an IDX (.gz or raw) or .npy file as N,C,H,W (uint8 or float32)."""
    from .data.idx import read_idx

    path = Path(path)
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)  # never unpickle a user file
        except (ValueError, OSError) as e:
            raise TrainlabError(f"{path}: not a readable .npy array ({e})") from None
    else:
        arr = read_idx(path)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise TrainlabError(f"{path}: expected images shaped N,H,W or N,C,H,W, got {arr.shape}")
    t = torch.from_numpy(np.array(arr, copy=True))
    return t if t.dtype == torch.uint8 else t.float()
