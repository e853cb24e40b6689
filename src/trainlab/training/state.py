"""A run's state as one checkpoint dict, and back: model, optimizer, schedule, scaler, EMA,
where the loop stands, every callback's own state, and one snapshot of every random
generator, so that a resumed run is bitwise the uninterrupted one."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from trainlab.store.checkpoint import make_checkpoint, to_plain
from trainlab.store.safeload import CheckpointError
from trainlab.training.loop import FitState

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


def session_checkpoint(s) -> dict:
    """The checkpoint of Session `s` as it stands now."""
    st = s.state
    return make_checkpoint(
        s.model, model_spec=s.spec,
        optimizer=s.optimizer.state_dict(), scheduler=s.scheduler.state_dict(),
        optimizer_param_names=param_names(s.model, s.optimizer),
        scaler=s.scaler.state_dict() if s.scaler.is_enabled() else None,
        ema=s.ema.state_dict() if s.ema is not None else None,
        precision=s.precision.name, schedule=s.schedule,
        epoch=st.epoch, global_step=st.global_step, step=st.step, partial=st.partial,
        history=to_plain(st.history, "a metrics row"), best=s.monitor.summary(),
        early_stopping=s.monitor.state_dict(), rng=capture_rng(),
        callbacks={k: to_plain(v, f"callback {k}'s state_dict()") for k, v in s.callbacks.state_dict().items()},
        config=s.cfg.to_dict(), recipe=s.cfg.recipe, threads=torch.get_num_threads(),
        world_size=s.dist.world_size, fingerprint=s.data.fingerprint(), classes=s.data.classes,
        mean=s.data.mean, std=s.data.std)


def load_session_state(s, ckpt: dict, reset_optimizer: bool = False, source: str = "the checkpoint") -> None:
    """Restore Session `s` from `ckpt`; a field of the wrong inner shape (a forged or foreign
    file) is one sentence, not a traceback."""
    try:
        _load(s, ckpt, reset_optimizer)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{source} does not fit this run ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); it was not used") from None


def _load(s, ckpt: dict, reset_optimizer: bool) -> None:
    s.model.load_state_dict(ckpt["model"])
    if ckpt.get("ema") is not None and s.ema is not None:
        s.ema.load_state_dict(ckpt["ema"])
    if not reset_optimizer:
        s.optimizer.load_state_dict(ckpt["optimizer"])
        s.scheduler.load_state_dict(ckpt["scheduler"])
        _load_scaler(s, ckpt)
    else:  # the "amnesia" fork: fresh optimizer, but the schedule continues where it was
        step = ckpt["scheduler"]["last_epoch"]
        s.scheduler.last_epoch = step
        # the rates of this config's schedule at that step (a changed --lr included)
        rates = [base * fn(step) for base, fn in zip(s.scheduler.base_lrs, s.scheduler.lr_lambdas)]
        for group, lr in zip(s.optimizer.param_groups, rates):
            group["lr"] = lr
        s.scheduler._last_lr = rates
    s.state = FitState(epoch=ckpt["epoch"], global_step=ckpt["global_step"], history=list(ckpt["history"]),
                       step=ckpt.get("step", 0), partial=ckpt.get("partial"))
    # checkpoints from before callbacks kept only the monitor's state, at the top level
    s.callbacks.load_state_dict({"early_stopping": ckpt["early_stopping"], **(ckpt.get("callbacks") or {})})
    restore_rng(ckpt["rng"])


def _load_scaler(s, ckpt: dict) -> None:
    saved = ckpt.get("scaler")
    if saved is not None and s.scaler.is_enabled():
        s.scaler.load_state_dict(saved)
    elif saved is not None:
        log.warning("resume: the checkpoint has float16 loss-scaler state but this run uses precision %s: "
                    "the scaler state is dropped", s.precision.name)
    elif s.scaler.is_enabled():
        log.warning("resume: switching to 16-mixed from %s: the loss scaler starts fresh at 65536 (the first "
                    "steps may be skipped while it calibrates)", ckpt.get("precision", "32"))
