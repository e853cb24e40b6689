"""`trainlab inspect` of an export (model.safetensors or model.onnx): its metadata, checked as
predict checks it, and its tensors or operators; printed with analysis.tables, so it lives
here above export/ rather than beside the schema."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from trainlab.analysis.tables import table
from trainlab.errors import TrainlabError
from trainlab.export.onnx_export import _checked
from trainlab.export.onnx_guard import _need
from trainlab.models import build_from_spec
from trainlab.store.checkpoint import check_compatible
from trainlab.store.exported import as_checkpoint, read_json_meta, read_safetensors, safetensors_meta, sidecar


def describe_export(path: str | Path) -> list[str]:
    """`trainlab inspect` of a model.safetensors or model.onnx: the metadata, checked, and
    the tensors (safetensors) or operators (ONNX)."""
    path = Path(path)
    out = [f"file      {path} ({path.stat().st_size / 2**20:.2f} MiB)"]
    if path.suffix == ".onnx":
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
    try:
        net = build_from_spec(ckpt["model_spec"], (), str(path), weights=weights)
    except TrainlabError as e:  # e.g. a user's model, not registered in this process
        return f"not checked against the model ({e})"
    try:
        check_compatible(net, weights, str(path))
    except TrainlabError as e:
        return f"DO NOT FIT the metadata's model: {e}"
    return "fit the metadata's model"
