"""What a resume may change, and making the change real.

Every config key is in exactly one of three kinds: free (read each time, the numbers' path
is the same), changeable (changes the run from here on: needs --allow-changes) and fixed
(restored from the checkpoint or shapes its state: refused by name)."""

from __future__ import annotations

import logging
from dataclasses import MISSING

from trainlab.config import RUN_FIELDS, Config
from trainlab.recipes import RECIPE_FIELDS
from trainlab.errors import ConfigError

log = logging.getLogger("trainlab")

# What a resume may change, in three kinds (every config key is in exactly one):
# free: read from the config each time, they change nothing about the numbers' path;
RESUME_FREE_KEYS = {"epochs", "quiet", "name", "runs_dir", "rerun", "data_dir", "device", "threads",
                    "patience", "min_delta", "save_every", "keep", "keep_top", "tensorboard", "track", "log_every", "test_every_epoch", "compile",
                    "channels_last", "tf32", "sync_bn", "malloc_tuning",
                    "memory_budget"}  # streamed or resident: the same batches, the same numbers
# changeable: they change the run from here on, so they need --allow-changes (resume --lr
# implies it); the optimizer's own values are restored from the checkpoint, so those are
# re-applied after the restore, or the override would silently do nothing;
RESUME_CHANGEABLE_KEYS = {"lr", "weight_decay", "momentum", "grad_clip", "label_smoothing",
                          "translate", "hflip", "erase", "rrc", "brightness", "contrast", "mixup", "cutmix",
                          "tta_flip", "precision"}
# fixed: everything else (model, data, seed, optimizer, schedule, batch, split, monitor, EMA,
# and fine-tuning's init_from, init_strict, freeze, unfreeze_at, body_lr_mult, train_per_class)
# is restored from the checkpoint or shapes its state: a change could not take effect, so
# it is refused by name; start a new run (or fork with --into) instead.


def _default(key: str):
    f = RUN_FIELDS.get(key) or RECIPE_FIELDS.get(key)
    if f is None:
        return None
    return f.default_factory() if f.default_factory is not MISSING else f.default


def saved_value(saved: dict, key: str):
    """`key` as the saved run had it: a key its config lacks was added since, and it ran with the default."""
    return saved[key] if key in saved else _default(key)


def changeable_differences(saved: dict, current: dict) -> dict:
    """{key: (saved, current)} of the keys a resume may change that differ."""
    return {k: (saved_value(saved, k), current.get(k)) for k in sorted(RESUME_CHANGEABLE_KEYS)
            if saved_value(saved, k) != current.get(k)}


def fixed_differences(saved: dict, current: dict) -> list[str]:
    # a key the saved config lacks is one added since that run was saved: it ran with the default
    keys = (set(saved) | set(current)) - RESUME_FREE_KEYS - RESUME_CHANGEABLE_KEYS
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(keys)
            if saved.get(k) != current.get(k) and not (k not in saved and current.get(k) == _default(k))]


def apply_overrides(s, changes: dict) -> None:
    """Make resume overrides real: the restored optimizer and scheduler would otherwise
    put the old values back (grad_clip, augmentation, precision come from the config)."""
    groups = s.optimizer.param_groups
    if "lr" in changes:
        old, new = changes["lr"]
        ratio = new / old  # the schedule's shape is kept; its peak moves
        s.scheduler.base_lrs = [b * ratio for b in s.scheduler.base_lrs]
        for g in groups:
            g["initial_lr"] = g.get("initial_lr", g["lr"]) * ratio
            g["lr"] = g["lr"] * ratio
        s.scheduler._last_lr = [g["lr"] for g in groups]
    if "weight_decay" in changes:  # group 0 decays (build_optimizer); fine-tuning's groups say which do
        for g in [g for g in groups if g.get("decay")] or groups[:1]:
            g["weight_decay"] = changes["weight_decay"][1]
    if "momentum" in changes and "momentum" in groups[0]:
        for g in groups:
            g["momentum"] = changes["momentum"][1]
    for key, (old, new) in changes.items():
        log.info("resume: %s %r -> %r (in effect from the next step)", key, old, new)


def changes_to_apply(saved: dict, cfg: Config, allow_changes: bool, what: str) -> dict:
    """{key: (old, new)} of the changeable keys; refuses fixed ones by name."""
    current = cfg.to_dict()
    fixed = fixed_differences(saved, current)
    if fixed:
        raise ConfigError(f"{what} cannot change {'; '.join(fixed)}: these are restored from the "
                          "checkpoint or shape its state, so the change could not take effect; "
                          "start a new run with trainlab train instead")
    changes = changeable_differences(saved, current)
    if "momentum" in changes and current.get("optimizer") != "sgd":
        raise ConfigError(f"momentum cannot change on resume with optimizer = {current.get('optimizer')!r}: "
                          "only sgd uses it, so the change would do nothing")
    if changes and not allow_changes:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        raise ConfigError(f"resuming with a changed config would not continue the same run: {shown}; "
                          "pass --allow-changes to do it anyway")
    return changes
