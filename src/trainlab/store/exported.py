"""Reading an export back (layer: store): a model.safetensors and its metadata
(model.safetensors.json, schema in trainlab.export.exported), or the folder's model.json
of an export made before schema 1, checked as a checkpoint's fields are."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trainlab.devices import pick_device
from trainlab.errors import TrainlabError
from trainlab.models import build_from_spec
from trainlab.store.checkpoint import check_compatible
from trainlab.store.safeload import CheckpointError
from trainlab.store.schema import check_checkpoint

SCHEMA = 1
LEGACY_META = "model.json"
MAX_META_BYTES = 64 << 20  # class names dominate; a bigger file is not one trainlab wrote


def sidecar(artifact: str | Path) -> Path:
    """model.safetensors -> model.safetensors.json."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def as_checkpoint(meta: dict, path) -> dict:
    """The checkpoint fields inference reads (model_spec, classes, mean, std, config), from a
    schema-1 table or an older model.json, checked; one sentence when they are not there."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its metadata is not a table: the file is damaged or forged")
    pre = meta.get("preprocessing") if isinstance(meta.get("preprocessing"), dict) else meta  # older model.json
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    options = data.get("options") if isinstance(data.get("options"), dict) else {}
    tta = pre.get("tta_flip", False)
    if not isinstance(tta, bool):
        raise CheckpointError(f"{path}: its tta_flip is not true or false: the file is damaged or forged")
    spec = meta.get("model_spec")
    classes = meta.get("classes")
    if classes is None and isinstance(spec, dict) and isinstance(spec.get("num_classes"), int):
        classes = [str(i) for i in range(spec["num_classes"])]
    image_size = options.get("image_size")
    config = {"dataset": data.get("dataset") if isinstance(data.get("dataset"), str) else "", "tta_flip": tta,
              **({"image_size": image_size} if image_size is not None else {}),
              **{k: v for k, v in options.items() if k != "image_size"}}
    ckpt = {"model_spec": spec, "model": {}, "mean": pre.get("mean"), "std": pre.get("std"), "config": config,
            "classes": classes, "fingerprint": data.get("fingerprint")}
    return check_checkpoint(ckpt, path)


def read_json_meta(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_META_BYTES:
            raise CheckpointError(f"{path} is over {MAX_META_BYTES >> 20} MiB: not metadata trainlab wrote")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} cannot be read as JSON ({type(e).__name__}): re-export the model") from None


def safetensors_meta(path: str | Path) -> tuple[dict, Path]:
    """(the metadata table, the file it came from) of an exported model.safetensors: its
    sidecar, else (exports before schema 1) the folder's model.json."""
    path = Path(path)
    for candidate in (sidecar(path), path.with_name(LEGACY_META)):
        if candidate.is_file():
            return read_json_meta(candidate), candidate
    raise TrainlabError(f"{path} has no {sidecar(path).name} (nor {LEGACY_META}) beside it: the model's "
                        "architecture, classes and normalization are written there by `trainlab export`; "
                        "copy it along with the weights")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise TrainlabError("reading model.safetensors needs safetensors: pip install 'trainlab[export]'") from None
    try:
        return load_file(str(path), device="cpu")  # tensors only, no code; sizes checked against the file
    except Exception as e:  # noqa: BLE001 -- SafetensorError, OSError: a damaged or foreign file
        raise CheckpointError(f"{path} is not a readable safetensors file "
                              f"({(str(e).splitlines() or [''])[0][:200]})") from None


def load_safetensors(path: str | Path, map_location=None, allow_import=(), model=None):
    """(model in eval mode, checkpoint-like dict) of an exported model.safetensors and its metadata."""
    path = Path(path)
    meta, where = safetensors_meta(path)
    ckpt = as_checkpoint(meta, where)
    weights = read_safetensors(path)
    net = build_from_spec(ckpt["model_spec"], tuple(allow_import or ()), str(path), weights=weights, model=model)
    check_compatible(net, weights, str(path))
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit its own model spec ({str(e).splitlines()[0]})") from None
    device = pick_device("auto") if map_location is None else pick_device(str(map_location))
    ckpt["model"], ckpt["export"] = weights, {"format": "safetensors", "metadata": str(where),
                                              "schema": meta.get("schema")}
    return net.to(device).eval(), ckpt
