"""`trainlab inspect`: what a checkpoint or state_dict file holds, the "snapshot of all the
knobs" made visible: parameters, optimizer state, progress, versions, hash verification."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from trainlab.analysis.tables import printable, table
from trainlab.errors import TrainlabError
from trainlab.models import build_from_spec
from trainlab.store import runs
from trainlab.store.manifest import MANIFEST, CheckpointDir
from trainlab.store.safeload import safe_load
from trainlab.store.schema import FORMAT, check_checkpoint
from trainlab.analysis.inspect_export import describe_export


def _norm(t) -> str:
    return f"{float(t.float().norm()):.4g}" if torch.is_tensor(t) and t.numel() else "-"


def _tensor_rows(state: dict) -> list[list]:
    return [[k, "x".join(map(str, v.shape)) or "scalar", f"{v.numel():,}", str(v.dtype).replace("torch.", "")]
            for k, v in state.items() if torch.is_tensor(v)]


def verification(path: Path) -> str:
    folder = CheckpointDir(path.parent)
    if not folder.manifest_path.exists():
        return "no manifest beside the file: not verified"
    problem = folder.verify(path.name)
    return "sha256 verified against the manifest" if problem is None else f"UNVERIFIED: {problem}"


def describe_file(path: str | Path) -> str:
    path = Path(path)
    obj = safe_load(path, map_location="cpu")
    out = [f"file      {path} ({path.stat().st_size / 2**20:.2f} MiB)", f"hash      {verification(path)}"]
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        try:
            check_checkpoint(obj, path)
            out += _describe_checkpoint(obj)
        except (TrainlabError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            # a damaged or forged file is still worth seeing: say why, then show what is there
            out.append(f"kind      trainlab checkpoint, DAMAGED: {e}")
            out.append(f"keys      {', '.join(map(str, obj))}")
    elif isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        out.append("kind      plain state_dict")
        out += _params_section(obj)
    elif isinstance(obj, dict):
        out.append(f"kind      dict with keys: {', '.join(map(str, obj))}")
        plain = {k: v for k, v in obj.items() if isinstance(v, (bool, int, float, str))}
        if plain:  # the hand-made checkpoint's epoch, loss, ...
            out.append("values    " + ", ".join(f"{k} {v}" for k, v in plain.items()))
        for key in ("model", "model_state_dict", "state_dict"):
            if isinstance(obj.get(key), dict):
                out += _params_section(obj[key])
                break
        for key in ("optimizer", "optimizer_state_dict"):
            if isinstance(obj.get(key), dict) and "state" in obj[key]:
                out += _optimizer_section(obj[key], None)
    else:
        out.append(f"kind      {type(obj).__name__}")
    return "\n".join(out)


def _params_section(state: dict) -> list[str]:
    rows = _tensor_rows(state)
    total = sum(v.numel() for k, v in state.items() if torch.is_tensor(v))
    return ["", f"tensors ({len(rows)}, {total:,} values)", table(["name", "shape", "count", "dtype"], rows,
                                                                  "lrrl")]


def _optimizer_section(opt: dict, names: list[str] | None) -> list[str]:
    groups = opt.get("param_groups", [])
    lines = ["", "optimizer param groups: " + "; ".join(
        ", ".join(f"{k}={v}" for k, v in g.items() if k in ("lr", "weight_decay", "betas", "momentum", "nesterov", "fused"))
        for g in groups)]
    rows = []
    for pid, st in opt.get("state", {}).items():
        name = names[pid] if names and isinstance(pid, int) and pid < len(names) else str(pid)
        step = st.get("step")
        step = int(step) if torch.is_tensor(step) or isinstance(step, (int, float)) else "-"
        rows.append([name, step, _norm(st.get("exp_avg")), _norm(st.get("exp_avg_sq")),
                     _norm(st.get("momentum_buffer"))])
    if rows:
        lines += [f"optimizer state ({len(rows)} parameters)",
                  table(["parameter", "step", "|exp_avg|", "|exp_avg_sq|", "|momentum|"], rows)]
    else:
        lines.append("optimizer state: empty (no step taken yet)")
    return lines


def _describe_checkpoint(ck: dict) -> list[str]:
    cfg = ck.get("config", {})
    best = ck.get("best") or {}
    out = ["kind      trainlab checkpoint (format version %s)" % ck.get("format_version"),
           f"versions  trainlab {ck.get('trainlab_version')}, torch {ck.get('torch_version')}",
           f"model     {ck['model_spec'].get('name')} {ck['model_spec'].get('kwargs') or ''} "
           f"input {ck['model_spec'].get('input_shape')} classes {ck['model_spec'].get('num_classes')}",
           f"progress  epoch {ck.get('epoch')}" + (f", step {ck['step']} of the next" if ck.get("step") else "")
           + f", global step {ck.get('global_step')}",
           f"recipe    {cfg.get('recipe')}: " + ", ".join(f"{k}={cfg[k]}" for k in
                                                        ("optimizer", "lr", "batch_size", "schedule", "epochs") if k in cfg)]
    if any(k in ck for k in ("precision", "threads", "world_size")):  # not in a run's final model.pt
        out.append(f"precision {ck.get('precision', '32')}; threads {ck.get('threads')}; "
                   f"world size {ck.get('world_size')}")
    if best.get("value") is not None:
        out.append(f"best      {best['metric']} {best['value']:.4f} at epoch {best['epoch']}")
    out += provenance_lines((ck.get("callbacks") or {}).get("finetune"))
    es = ck.get("early_stopping") or {}
    if es.get("patience"):
        out.append(f"early stop patience {es['patience']}, {es['counter']} epochs without improvement")
    hist = ck.get("history") or []
    if hist:
        rows = [[r["epoch"], f"{r['train_loss']:.4f}", _fmt(r.get("val_loss")), _fmt(r.get("val_acc")),
                 _fmt(r.get("test_acc")), f"{r['lr']:.3g}"] for r in hist[-10:]]
        out += ["", "metrics (last 10 epochs)",
                table(["epoch", "train_loss", "val_loss", "val_acc", "test_acc", "lr"], rows)]
    out += _params_section(ck["model"])
    if ck.get("optimizer"):
        out += _optimizer_section(ck["optimizer"], ck.get("optimizer_param_names"))
    extras = [k for k in ("scheduler", "scaler", "ema", "rng", "fingerprint") if ck.get(k) is not None]
    out += ["", "also holds: " + ", ".join(extras)]
    return out


def provenance_lines(ft) -> list[str]:
    """Where a fine-tuned run's weights came from (training.finetune's record)."""
    if not isinstance(ft, dict):
        return []
    out = []
    p = ft.get("parent")
    if isinstance(p, dict):
        counts = ", ".join(f"{len(p.get(k) or [])} {k.replace('_', ' ')}"
                           for k in ("loaded", "new_head", "shape_mismatch", "missing", "unexpected"))
        out.append(f"parent    {p.get('path')} ({p.get('kind')}, sha256 {str(p.get('sha256'))[:16]}...): {counts}")
    sub = ft.get("train_subset")
    if isinstance(sub, dict):
        out.append(f"subset    at most {sub.get('per_class')} training images per class: {sub.get('samples')} "
                   f"(indices sha256 {str(sub.get('indices_sha256'))[:16]}...)")
    if ft.get("frozen_names"):
        when = f"unfreeze at epoch {ft['unfreeze_at']}" if ft.get("unfreeze_at") else "frozen to the end"
        out.append(f"freeze    {len(ft['frozen_names'])} tensors, {'frozen' if ft.get('frozen') else 'trained'} "
                   f"now ({when})")
    return out


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def describe_run(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    folder = CheckpointDir(run_dir / runs.CHECKPOINTS)
    if not any((run_dir / n).exists() for n in (runs.CONFIG_FILE, runs.CHECKPOINTS, runs.WEIGHTS_FILE)):
        raise TrainlabError(f"{run_dir} is a folder but not a trainlab run folder (no config.toml, "
                            "checkpoints/ or model.pt): give a run folder or a checkpoint file")
    files = folder.manifest()["files"]
    names = sorted(set(folder.files_here()) | set(files))
    rows = []
    for name in names:
        # the entry the file on disk matches (resume's choice), not the newest one recorded:
        # a kill mid-save leaves the old file under the new file's entry
        matched, problem = folder.resolve(name, files)
        e = matched or files.get(name, {})
        rows.append([name, e.get("epoch", "?"), e.get("global_step", "?"),
                     _fmt(e.get("value")) + f" {e.get('metric', '')}".rstrip(),
                     "ok" if problem is None else f"UNVERIFIED: {problem}"])
    out = [f"run {run_dir}", table(["checkpoint", "epoch", "step", "monitored", "verified"], rows)
           if rows else f"(no checkpoints in {folder.folder})"]
    good = folder.newest_good()
    if good:
        out += ["", f"newest verified: {good[0]}", describe_file(folder.folder / good[0])]
    elif (run_dir / "model.pt").exists():
        out += ["", describe_file(run_dir / "model.pt")]
        try:  # model.pt holds no callbacks: the provenance is in meta.json
            out += provenance_lines(runs.read_json(run_dir / runs.META_FILE).get("finetune"))
        except Exception:  # noqa: BLE001 -- no or a damaged meta.json: nothing to add
            pass
    return "\n".join(out)


def describe(path: str | Path) -> str:
    """What `trainlab inspect` prints: each line escaped, as names in a checkpoint are the file's."""
    path = Path(path)
    if path.suffix in (".safetensors", ".onnx") and path.is_file():  # trainlab's exports
        text = "\n".join(describe_export(path))
    else:
        text = describe_run(path) if path.is_dir() else describe_file(path)
    return "\n".join(printable(line) for line in text.split("\n"))


# ---------------------------------------------------------------- the model summary (--summary)

MAX_LAYER_ROWS = 500  # a table longer than this says how many rows it left out


def _counts_line(total: int, frozen: int) -> str:
    return f"parameters {total:,}: {total - frozen:,} trainable, {frozen:,} frozen"


def layer_table(model: nn.Module, frozen: set[str] | None = None) -> str:
    """Any model's layers: each module that holds parameters of its own, its type, their shapes,
    its parameter count and whether they train. `frozen`: the parameter names that do not (else
    each parameter's requires_grad says)."""
    rows, total, n_frozen = [], 0, 0
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        full = [(f"{name}.{n}" if name else n, p) for n, p in own]
        still = [(frozen is not None and n in frozen) or (frozen is None and not p.requires_grad) for n, p in full]
        count = sum(p.numel() for _, p in full)
        total += count
        n_frozen += sum(p.numel() for (_, p), f in zip(full, still) if f)
        rows.append([name or "(model)", type(module).__name__,
                     ", ".join(f"{n} {'x'.join(map(str, p.shape)) or 'scalar'}" for n, p in own), f"{count:,}",
                     "no" if all(still) else "partly" if any(still) else "yes"])
    return "\n".join([_counts_line(total, n_frozen), "", *_table(["layer", "type", "parameters", "count", "trainable"],
                                                                rows, "lllrl")])


def _table(headers, rows, align) -> list[str]:
    more = len(rows) - MAX_LAYER_ROWS
    out = [table(headers, rows[:MAX_LAYER_ROWS], align[:len(headers)])]
    return out + ([f"... {more:,} more rows"] if more > 0 else [])


def _state_table(state: dict, frozen: set[str]) -> str:
    """The layer table from a file's tensors alone (the model not built): grouped by module
    prefix; buffers (e.g. BatchNorm's running statistics) cannot be told apart here."""
    groups: dict[str, list] = {}
    for key, t in state.items():
        if torch.is_tensor(t):
            groups.setdefault(key.rpartition(".")[0], []).append((key, t))
    rows, total, n_frozen = [], 0, 0
    for prefix, items in groups.items():
        count = sum(t.numel() for _, t in items)
        still = [k in frozen for k, _ in items]
        total += count
        n_frozen += sum(t.numel() for (_, t), f in zip(items, still) if f)
        rows.append([prefix or "(model)", ", ".join(f"{k.rpartition('.')[2]} {'x'.join(map(str, t.shape)) or 'scalar'}"
                                                    for k, t in items), f"{count:,}",
                     "no" if all(still) else "partly" if any(still) else "yes"])
    return "\n".join([_counts_line(total, n_frozen) + " (tensors, buffers included)", "",
                      *_table(["layer", "tensors", "count", "trainable"], rows, "llrl")])


def _frozen_names(ft) -> set[str]:
    """The parameters --freeze holds still now, from the fine-tuning record (checkpoint or meta.json)."""
    if not isinstance(ft, dict) or not ft.get("frozen", True):
        return set()
    return {n for n in ft.get("frozen_names") or [] if isinstance(n, str)}


def summarize(path: str | Path, allow_import: tuple[str, ...] = ()) -> str:
    """What `--summary` prints: each line escaped (names in a file are the file's)."""
    return "\n".join(printable(line) for line in _summary(path, allow_import).split("\n"))


def _summary(path: str | Path, allow_import: tuple[str, ...] = ()) -> str:
    """`trainlab inspect PATH --summary`: trainable vs frozen parameters and the layer table of a
    run's newest verified checkpoint (else its model.pt) or of a checkpoint file. The model is
    built from the file's spec (a registered model, or a module named with --allow-import);
    when it cannot be, the table comes from the file's tensors and says why."""
    path = Path(path)
    ft = None
    if path.is_dir():
        good = CheckpointDir(path / runs.CHECKPOINTS).newest_good()
        file = path / runs.CHECKPOINTS / good[0] if good else path / runs.WEIGHTS_FILE
        if not file.is_file():
            raise TrainlabError(f"{path} holds no verified checkpoint and no model.pt: nothing to summarize")
        if not good:
            try:
                ft = runs.read_json(path / runs.META_FILE).get("finetune")
            except Exception:  # noqa: BLE001 -- no or a damaged meta.json: no freeze record
                ft = None
    else:
        file = path
    obj = safe_load(file, map_location="cpu")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        check_checkpoint(obj, file)
        state, ft = obj["model"], (obj.get("callbacks") or {}).get("finetune") or ft
        try:
            model = build_from_spec(obj["model_spec"], tuple(allow_import), str(file), weights=state)
        except TrainlabError as e:
            head = f"model     {obj['model_spec'].get('name')} (not built: {e})"
            return "\n".join([f"file      {file}", head, _state_table(state, _frozen_names(ft))])
        return "\n".join([f"file      {file}", f"model     {obj['model_spec'].get('name')}",
                          layer_table(model, _frozen_names(ft))])
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return "\n".join([f"file      {file}", "model     (a plain state_dict: no model spec)", _state_table(obj, set())])
    raise TrainlabError(f"{file} is not a trainlab checkpoint or a state_dict: nothing to summarize")


__all__ = ["describe", "describe_file", "describe_run", "summarize", "layer_table", "MANIFEST"]
