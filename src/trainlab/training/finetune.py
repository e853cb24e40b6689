"""Fine-tuning: freeze part of the model, give the body its own learning rate, train on a
seeded per-class subset, and carry the run's provenance (training.init_weights loads the
parent weights) in every checkpoint.

- `freeze` ("body" = every parameter but the head's, the head being the model's last
  nn.Linear; or parameter-name prefixes): frozen parameters get no gradient, and BatchNorm
  layers whose parameters are all frozen stay in eval mode (their running statistics are
  kept as loaded). `unfreeze_at` = N: they train from epoch N (1-based, as metrics.jsonl
  counts) on. The optimizer holds every parameter from the start, in a fixed group layout
  (head / body x decay / no decay), so a resume restores its state group by group.
- `body_lr_mult`: the learning rate of the body (everything but the head) as a multiple.
- `train_per_class` = N: at most N training images per class (after the validation split is
  carved), drawn with a seed; the indices' sha256 is recorded.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from trainlab.data.loader import derive_seed
from trainlab.errors import ConfigError
from trainlab.store import runs
from trainlab.store.checkpoint import unwrap
from trainlab.training.callbacks import Callback
from trainlab.training.distributed import DistContext
from trainlab.training.init_weights import _under, head_names, head_prefix, init_weights

log = logging.getLogger("trainlab")

STATE_KEY = "finetune"
_SUBSET_SALT = 0x5EB5E7


# ---------------------------------------------------------------- freezing

def frozen_names(model: nn.Module, freeze: str) -> list[str]:
    """The parameter names `freeze` selects ("body", or comma-separated prefixes)."""
    names = [n for n, _ in unwrap(model).named_parameters()]
    if freeze.strip() == "body":
        head = head_prefix(model)
        if head is None:
            raise ConfigError("freeze = 'body' needs a head, and this model has no nn.Linear layer to call "
                              "its head: name the parameters to freeze by prefix instead")
        return [n for n in names if not _under(n, head)]
    chosen = []
    for prefix in (p.strip() for p in freeze.split(",")):
        hit = [n for n in names if _under(n, prefix)]
        if not hit:
            tops = sorted({n.split(".")[0] for n in names}, key=lambda t: (len(t), t))
            raise ConfigError(f"freeze prefix {prefix!r} matches no parameter of this model; its top-level "
                              f"names are {', '.join(tops[:20])} (or use freeze = \"body\")")
        chosen += [n for n in hit if n not in chosen]
    if len(chosen) == len(names):
        raise ConfigError(f"freeze = {freeze!r} freezes every parameter, so nothing would train: "
                          "leave the head out (freeze = \"body\" does)")
    return chosen


def optimizer_layout(cfg, model: nn.Module) -> dict:
    """build_optimizer's keywords: the body/head split when freeze or body_lr_mult asks for it
    (a fixed layout, the same on resume); {} keeps the plain decay / no-decay layout."""
    if cfg.freeze is None and cfg.body_lr_mult == 1.0:
        return {}
    head = head_names(model)
    if not head and cfg.body_lr_mult != 1.0:
        raise ConfigError("body_lr_mult needs a head (the model's last nn.Linear), and this model has none")
    body = {n for n, _ in unwrap(model).named_parameters() if n not in head}
    return {"body": body, "body_lr_mult": cfg.body_lr_mult}


# ---------------------------------------------------------------- the per-class subset

def per_class_subset(labels: torch.Tensor, idx: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """At most `per_class` of the indices `idx` for each class, drawn with `seed`, sorted."""
    g = torch.Generator().manual_seed(derive_seed(seed, _SUBSET_SALT))
    sub = labels[idx]
    parts = []
    for c in torch.unique(sub).tolist():
        mine = idx[sub == c]
        parts.append(mine[torch.randperm(len(mine), generator=g)[:per_class]])
    return torch.cat(parts).sort().values


def subset_record(labels: torch.Tensor, idx: torch.Tensor, per_class: int) -> dict:
    counts = torch.bincount(labels[idx]).tolist()
    digest = hashlib.sha256(idx.to(torch.int64).numpy().tobytes()).hexdigest()
    return {"per_class": per_class, "samples": len(idx), "counts": counts, "indices_sha256": digest}


# ---------------------------------------------------------------- the callback and the session seam

class Finetune(Callback):
    """Freezes and unfreezes on schedule, and carries the run's provenance (the parent
    weights, the training subset) in every checkpoint and in `run_dir`/meta.json (set by
    `attach` once the run has a folder; rank 0 writes it)."""
    order = 5
    state_key = STATE_KEY

    def __init__(self, frozen: list[str], unfreeze_at: int, record: dict):
        self.frozen_names, self.unfreeze_at = frozen, unfreeze_at
        self.record = record  # {"parent": ..., "train_subset": ...}
        self.run_dir: Path | None = None
        self.is_main = True
        self.frozen = bool(frozen)
        self._hooks: list = []

    def _frozen_at(self, epochs_done: int) -> bool:
        """Frozen while training epoch epochs_done + 1 (1-based)?"""
        return bool(self.frozen_names) and (self.unfreeze_at == 0 or epochs_done + 1 < self.unfreeze_at)

    def apply(self, model: nn.Module, frozen: bool) -> None:
        model = unwrap(model)
        chosen = set(self.frozen_names)
        for name, p in model.named_parameters():
            if name in chosen:
                p.requires_grad_(not frozen)
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if frozen:  # BatchNorm whose parameters are all frozen: eval mode (statistics kept)
            for name, m in model.named_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    own = [f"{name}.{n}" if name else n for n, _ in m.named_parameters()]
                    if own and all(n in chosen for n in own):
                        self._hooks.append(m.register_forward_pre_hook(_eval_mode))
        self.frozen = frozen

    def attach(self, run_dir: Path, is_main: bool) -> None:
        self.run_dir, self.is_main = Path(run_dir), is_main

    def on_fit_start(self, run) -> None:
        if self.frozen_names:
            self.apply(run.model, self._frozen_at(run.state.epoch))
        if run.state.global_step == 0 and self.run_dir is not None and self.is_main:
            meta_path = self.run_dir / runs.META_FILE
            try:
                meta = runs.read_json(meta_path)
            except Exception:  # noqa: BLE001 -- a missing or damaged meta.json: start it again
                meta = {}
            if meta.get(STATE_KEY) != self.record:
                runs.write_json(meta_path, {**meta, STATE_KEY: self.record})

    def on_epoch_end(self, run, row):
        if self.frozen and not self._frozen_at(row["epoch"]):
            self.apply(run.model, False)
            log.info("unfreeze: after epoch %d, the %d frozen parameter tensor(s) train from epoch %d on",
                     row["epoch"], len(self.frozen_names), row["epoch"] + 1)

    def on_fit_end(self, run) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def state_dict(self) -> dict:
        return {**self.record, "frozen": self.frozen, "frozen_names": list(self.frozen_names),
                "unfreeze_at": self.unfreeze_at}

    def load_state_dict(self, d: dict) -> None:
        # the provenance is the run's first one: a resume never reads the init file again
        self.record = {k: d[k] for k in ("parent", "train_subset") if k in d}
        self.frozen = bool(d.get("frozen", self.frozen))


def _eval_mode(module, _inputs):
    module.eval()


def needed(cfg) -> bool:
    return bool(cfg.init_from or cfg.freeze or cfg.train_per_class)


def setup(cfg, model: nn.Module, data, dist: DistContext, fresh: bool) -> Finetune | None:
    """Called right after the model is built, before its optimizer: loads `init_from` on a fresh
    run, freezes what `freeze` names, and returns the Finetune callback when a fine-tuning key
    is set (else None)."""
    if not needed(cfg):
        return None
    if cfg.freeze and dist.enabled:
        raise ConfigError("freeze is not supported with several processes (DDP tracks the trainable "
                          "parameters when it starts); train frozen in one process")
    record: dict = {}
    if cfg.init_from and fresh:
        record["parent"] = init_weights(model, cfg.init_from, cfg.init_strict, cfg.init_map, bool(cfg.reinit_head))
    if cfg.train_per_class:
        record["train_subset"] = subset_record(data.train_y, train_indices(data, cfg), cfg.train_per_class)
    frozen = frozen_names(model, cfg.freeze) if cfg.freeze else []
    cb = Finetune(frozen, cfg.unfreeze_at, record)
    if frozen:  # before the optimizer and EMA are built: the first step is already frozen
        cb.apply(model, cb._frozen_at(0))
    return cb


def train_indices(data, cfg) -> torch.Tensor:
    """The training indices a run uses: the split left after validation, subset per class."""
    idx, _ = data.train_val_indices(cfg.val_size, cfg.seed)
    if cfg.train_per_class:
        idx = per_class_subset(data.train_y, idx, cfg.train_per_class, cfg.seed)
    return idx
