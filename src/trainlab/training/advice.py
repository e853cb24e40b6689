"""What to do after the weights diverged: a command that can work, never the one that just failed.

The advice is checked before it is given: the checkpoint it starts from must hold finite
weights and optimizer state (a best.pt saved just before the blow-up may not), and a start
this run was already resumed from, at this rate, is not advised again. Otherwise it is a
fresh start at a lower rate, the old folder kept aside.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import torch

from trainlab.store.manifest import CheckpointDir
from trainlab.store.safeload import CheckpointError
from trainlab.store.schema import load_checkpoint


def _tensors(obj, prefix: str = ""):
    """(name, tensor) of every tensor nested in dicts and lists."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}")


def nonfinite_part(ckpt: dict) -> str | None:
    """Which part of a checkpoint holds NaN or inf ('weights model.0.weight', 'optimizer state
    ...'), or None when its weights, EMA and optimizer state are all finite."""
    for part, label in (("model", "weights"), ("ema", "EMA weights"), ("optimizer", "optimizer state")):
        for name, t in _tensors(ckpt.get(part)):
            if t.is_floating_point() or t.is_complex():
                if not bool(torch.isfinite(t).all()):
                    return f"{label} {name}"
    return None


def _checked(ckpts: CheckpointDir, name: str) -> tuple[dict | None, str | None]:
    """(the checkpoint, None) if `name` verifies and is finite, else (None, why not)."""
    problem = ckpts.verify(name)
    if problem:
        return None, problem
    try:
        ckpt = load_checkpoint(ckpts.folder / name, map_location="cpu")
    except (CheckpointError, OSError) as e:
        return None, str(e)
    bad = nonfinite_part(ckpt)
    return (None, f"its {bad} is not finite") if bad else (ckpt, None)


def _tried(resumed: dict | None, name: str, ckpt: dict) -> bool:
    """This session already started from `name` as it is now: resumed from it, or from best.pt
    at its epoch (a resume from best that diverges again is not advised once more)."""
    return bool(resumed and resumed.get("epoch") == ckpt.get("epoch")
                and resumed.get("from") in (name, "best.pt"))


def divergence_advice(run_dir: Path | None, lr: float, resumed: dict | None = None) -> str:
    """One clause: the command to run after a divergence at learning rate `lr`. `resumed`
    ({"from": name, "epoch": n, "lr": x}) is the checkpoint this session was resumed from."""
    lower = f"{lr / 10:.3g}"
    if run_dir is None:
        return f"lower the learning rate (e.g. lr = {lower}) or clip the gradients (grad_clip = 1.0)"
    run = shlex.quote(str(run_dir))
    ckpts = CheckpointDir(Path(run_dir) / "checkpoints")
    newest = ckpts.newest_good()  # what a plain resume starts from
    if newest is None:  # nothing saved yet: a resume starts the run over, at the lower rate
        return f"continue with trainlab resume {run} --lr {lower} (or --grad-clip 1.0)"
    starts = ([("best.pt", "--from best.pt ")] if ckpts.verify("best.pt") is None else [])
    starts += [(newest[0], "")] if newest[0] != "best.pt" else []
    why = []
    for name, flag in starts:
        ckpt, problem = _checked(ckpts, name)
        if ckpt is None:
            why.append(f"{name} cannot be the start: {problem}")
        elif _tried(resumed, name, ckpt):
            why.append(f"this run was already resumed from {resumed['from']} (epoch {resumed['epoch']}) at lr "
                       f"{resumed.get('lr', lr):.3g} and diverged again")
        else:
            return f"continue with trainlab resume {run} {flag}--lr {lower} (or --grad-clip 1.0)"
    config = shlex.quote(str(Path(run_dir) / "config.toml"))
    return (f"no checkpoint is a sound start ({'; '.join(dict.fromkeys(why))}): start the run over at a lower rate with "
            f"trainlab train --config {config} --lr {lower} --grad-clip 1.0 --restart (the old folder is kept aside)")
