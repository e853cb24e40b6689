"""A run's state as one checkpoint dict, and back, composed from stateful parts (objects with
state_dict / load_state_dict, named by their checkpoint key, as ignite's `to_save`): model,
optimizer, schedule, scaler, EMA, where the loop stands, every callback's own state, and one
snapshot of every random generator, so that a resumed run is bitwise the uninterrupted one.
The keys are the checkpoint format's (unchanged since format 1)."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from trainlab.store.checkpoint import make_checkpoint, to_plain
from trainlab.store.safeload import CheckpointError
from trainlab.training.callbacks import CallbackList

log = logging.getLogger("trainlab")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """torch (CPU, CUDA), numpy and Python generator states as tensors and plain values
    (the legacy numpy tuple is refused by weights_only loading; its dict form, with the key
    array as a tensor, is fine)."""
    np_state = np.random.get_state(legacy=False)
    np_state = {**np_state, "state": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                                      "pos": int(np_state["state"]["pos"])}}
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": np_state, "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    s = state["numpy"]
    np.random.set_state({**s, "state": {"key": s["state"]["key"].numpy().astype(np.uint32),
                                        "pos": s["state"]["pos"]}})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def param_names(model, optimizer) -> list[str]:
    """Parameter names in the optimizer's order (its state_dict knows only indices)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


# ---------------------------------------------------------------- the checkpoint as parts

class RandomState:
    """Every random generator of the process, as one checkpoint part."""

    def state_dict(self) -> dict:
        return capture_rng()

    def load_state_dict(self, d: dict) -> None:
        restore_rng(d)


class ScalerState:
    """The float16 loss scaler: its state when enabled, else None; a change of precision across
    a resume is said, never an error."""

    def __init__(self, scaler, precision: str):
        self.scaler, self.precision = scaler, precision

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler.is_enabled() else None

    def load_state_dict(self, saved: dict | None, saved_precision: str = "32") -> None:
        if saved is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved)
        elif saved is not None:
            log.warning("resume: the checkpoint has float16 loss-scaler state but this run uses precision %s: "
                        "the scaler state is dropped", self.precision)
        elif self.scaler.is_enabled():
            log.warning("resume: switching to 16-mixed from %s: the loss scaler starts fresh at 65536 (the first "
                        "steps may be skipped while it calibrates)", saved_precision)


class CallbackStates:
    """Every callback's own state, by its key, as plain values; `skip`: keys that are parts of
    their own (the monitor's state is the checkpoint's `early_stopping`, stored once)."""

    def __init__(self, callbacks: CallbackList, skip: tuple[str, ...]):
        self.callbacks, self.skip = callbacks, skip

    def state_dict(self) -> dict:
        return {k: to_plain(v, f"callback {k}'s state_dict()") for k, v in self.callbacks.state_dict(self.skip).items()}

    def load_state_dict(self, d: dict) -> None:
        self.callbacks.load_state_dict({k: v for k, v in d.items() if k not in self.skip}, skip=self.skip)


LOOP = ""  # the part whose keys (epoch, global_step, step, partial, history) are the checkpoint's top level
OPTIMIZATION = ("optimizer", "scheduler", "scaler")  # what a resume with a fresh optimizer leaves out


def compose(model, spec: dict, parts: dict, record: dict) -> dict:
    """One checkpoint: the model's weights, each stateful part's state_dict() under its name, and
    `record` (plain values that describe the run). Parts that are None are stored as None."""
    fields = {}
    for name, part in parts.items():
        state = part.state_dict() if part is not None else None
        if name == LOOP:
            fields.update(state, history=to_plain(state["history"], "a metrics row"))
        else:
            fields[name] = state
    return make_checkpoint(model, model_spec=spec, **fields, **record)


def restore(model, parts: dict, ckpt: dict, source: str, skip: tuple[str, ...] = ()) -> None:
    """Load `ckpt` into the model and each part (in the order given; `skip`: names left as they
    are). A field of the wrong inner shape (a forged or foreign file) is one sentence, not a
    traceback."""
    try:
        model.load_state_dict(ckpt["model"])
        for name, part in parts.items():
            if name in skip or part is None:
                continue
            if name == LOOP:
                part.load_state_dict(ckpt)
            elif name == "scaler":
                part.load_state_dict(ckpt.get("scaler"), ckpt.get("precision", "32"))
            elif ckpt.get(name) is not None:  # e.g. no EMA state in a run saved without EMA
                part.load_state_dict(ckpt[name])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{source} does not fit this run ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); it was not used") from None
