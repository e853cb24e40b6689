"""Building a run's parts from its config: every cross-field check first (one function, before
any side effect), then the loaders, and the parts (`RunParts`: the model, its optimizer,
schedule, precision, scaler, EMA and loss), returned, never written into a session."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from trainlab import models
from trainlab.catalog import flips_keep_labels
from trainlab.config import Config
from trainlab.config_checks import parse_class_weights
from trainlab.text import parse_bytes
from trainlab.data import Dataset, DeviceLoader
from trainlab.data.augment import Augment
from trainlab.data.batch_transforms import MixCut
from trainlab.errors import ConfigError
from trainlab.inference import EVAL_BATCH
from trainlab.recipes import PRESETS
from trainlab.store import history
from trainlab.training import distributed, finetune
from trainlab.training.ema import make_ema
from trainlab.training.optim import build_optimizer, lr_multiplier
from trainlab.training.precision import Precision, resolve_precision
from trainlab.training.schedules import Plateau

log = logging.getLogger("trainlab")


def check_run(cfg: Config, data: Dataset, dist: distributed.DistContext, device: torch.device) -> None:
    """Every check that needs more than one config value (or the data, or the processes):
    called once, before threads, seeds or files are touched. Single values are checked by
    config.validate."""
    n_train = len(data.train_y)
    if data.val_rows is not None:  # the data names its validation rows (a folder's val/)
        n_fit = n_train - len(data.val_rows)
        if n_fit < 1:
            raise ConfigError(f"{data.name}: every training image is in the validation split; "
                              "put training images in train/")
        log.info("data: the %d validation images are the data's own (val/); val_size is not used",
                 len(data.val_rows))
    elif cfg.val_size >= n_train:
        raise ConfigError(f"val_size = {cfg.val_size} is invalid: the training split has only {n_train} samples")
    else:
        n_fit = n_train - cfg.val_size
    if cfg.train_per_class:  # a per-class subset of what validation leaves (training.finetune)
        n_fit = len(finetune.train_indices(data, cfg))
    if cfg.train.batch_size > n_fit:
        raise ConfigError(f"batch_size = {cfg.train.batch_size} is invalid: larger than the "
                          f"{n_fit} training samples" + (f" (train_per_class = {cfg.train_per_class})"
                                                         if cfg.train_per_class else ""))
    if dist.enabled and cfg.train.batch_size % dist.world_size:
        raise ConfigError(f"batch_size = {cfg.train.batch_size} is the global batch and must divide "
                          f"evenly across the {dist.world_size} processes")
    # each mid-epoch validation is a metrics row: the run folder's readers bound the rows an epoch may add
    # (val_every counts optimizer steps: accumulate batches make one)
    opt_steps = math.ceil(math.ceil(n_fit / cfg.train.batch_size) / cfg.train.accumulate)
    if cfg.val_every and opt_steps // cfg.val_every > history.MAX_VALIDATIONS_PER_EPOCH:
        raise ConfigError(f"val_every = {cfg.val_every} would validate more than {history.MAX_VALIDATIONS_PER_EPOCH:,} "
                          f"times an epoch ({opt_steps:,} optimizer steps); raise val_every")
    if cfg.val_every and dist.enabled:
        raise ConfigError(f"val_every = {cfg.val_every} is not available under DDP (a mid-epoch checkpoint would "
                          "hold one rank's partial epoch); leave val_every at 0 with --nproc")
    if cfg.sync_bn and not (dist.enabled and device.type == "cuda"):
        raise ConfigError("sync_bn needs DDP on CUDA GPUs (torchrun with NCCL); on the CPU "
                          "each rank keeps its own BatchNorm statistics")
    _say_flips(cfg)
    _check_class_balance(cfg, data)
    if cfg.freeze and not cfg.init_from:
        log.warning("freeze = %s without init_from: the frozen parameters keep their random initial values "
                    "and never learn; give --init-from WEIGHTS, or leave out --freeze", cfg.freeze)
    if cfg.train.tta_flip and not cfg.train.hflip:
        log.warning("tta_flip is on but hflip is off: the model never saw mirrored images, "
                    "so averaging over them usually hurts")
    if cfg.patience and cfg.train.schedule == "onecycle" and cfg.monitor.endswith("loss"):
        # seen in the notebooks: val_loss rises while the rate is high, before the anneal
        log.warning("patience = %d with a one-cycle schedule, monitoring %s: the loss often rises during "
                    "the high-rate phase and stops the run before the schedule anneals; monitor val_acc, "
                    "raise patience, or use schedule = cosine", cfg.patience, cfg.monitor)


def _say_flips(cfg: Config) -> None:
    """Where the recipe would flip images, the run says whether the data allows it (config.resolve
    decided; a flag given by name is the user's choice and is kept)."""
    preset = PRESETS.get(cfg.recipe)
    if preset is None or not (preset.hflip or preset.tta_flip):
        return
    keep, why = flips_keep_labels(cfg.dataset)
    if cfg.train.hflip == preset.hflip and cfg.train.tta_flip == preset.tta_flip:
        log.info("data: recipe %s flips images (%s)", cfg.recipe, why if keep else f"{why}, but asked for")
    elif not keep:
        log.info("data: recipe %s's horizontal flips are off (%s; --hflip --tta-flip turn them on)", cfg.recipe, why)


def _check_class_balance(cfg: Config, data: Dataset) -> None:
    if cfg.class_weights is not None and cfg.balanced_sampler:
        raise ConfigError("class_weights and balanced_sampler both correct for class imbalance (together they "
                          "correct it twice over); choose one of them")
    weights = parse_class_weights(cfg.class_weights)
    if isinstance(weights, list) and len(weights) != data.num_classes:
        names = ", ".join(map(str, data.classes[:5])) + (", ..." if data.num_classes > 5 else "")
        raise ConfigError(f"class_weights gives {len(weights)} weights but {data.name} has {data.num_classes} "
                          f"classes; give one weight per class in class order ({names}), or auto")


def class_balance(cfg: Config, data: Dataset) -> dict | None:
    """What corrects for class imbalance in this run (None: nothing), as meta.json and results.json
    record it: the method, the training split's class counts, and the loss weights used. auto is
    the inverse class frequency, scaled to mean 1 over the classes the split holds (a class it
    lacks gets 0: no training sample carries its label)."""
    weights = parse_class_weights(cfg.class_weights)
    if weights is None and not cfg.balanced_sampler:
        return None
    counts = torch.bincount(data.train_y[finetune.train_indices(data, cfg)], minlength=data.num_classes)
    record = {"method": "balanced-sampler" if cfg.balanced_sampler else "class-weights",
              "train_counts": counts.tolist()}
    if weights == "auto":
        c = counts.double()
        inv = torch.where(c > 0, 1.0 / c.clamp(min=1), torch.zeros_like(c))
        weights = (inv * int((c > 0).sum()) / inv.sum()).tolist()
    if weights is not None:
        record.update(class_weights=cfg.class_weights.strip() if cfg.class_weights.strip() == "auto" else "given",
                      weights=[float(w) for w in weights])
    return record


def resolve_mode(cfg: Config) -> str:
    if cfg.mode != "auto":
        return cfg.mode
    return "max" if cfg.monitor.endswith("acc") else "min"


def model_spec(cfg: Config, data: Dataset) -> dict:
    return {"name": cfg.model, "kwargs": dict(cfg.model_kwargs),
            "input_shape": list(data.input_shape), "num_classes": data.num_classes}


def build_augment(cfg: Config, data: Dataset):
    """The loader's augmentation (images only); None when the recipe asks for none."""
    t = cfg.train
    if not (t.translate or t.hflip or t.erase or t.rrc or t.brightness or t.contrast):
        return None
    c = len(data.mean)
    mean = torch.as_tensor(data.mean, dtype=torch.float32).reshape(1, c, 1, 1)
    std = torch.as_tensor(data.std, dtype=torch.float32).reshape(1, c, 1, 1)
    # jitter clamps to the pixel range: normalized 0 and 255 of each channel
    return Augment(translate=t.translate, hflip=t.hflip, erase=t.erase, rrc=t.rrc, brightness=t.brightness,
                   contrast=t.contrast, black=-mean / std, white=(1 - mean) / std)


def build_batch_transforms(cfg: Config, data: Dataset) -> list:
    """The recipe's batch transforms (on images and labels: mixup, cutmix), run before the user's."""
    t = cfg.train
    if not (t.mixup or t.cutmix):
        return []
    return [MixCut(data.num_classes, mixup=t.mixup, cutmix=t.cutmix)]


def make_loaders(data: Dataset, cfg: Config, device, augment=None,
                 ctx: distributed.DistContext = distributed.DistContext()) -> dict[str, DeviceLoader]:
    """Train / val / test loaders on `device`; val is the data's own (a folder's val/) or
    carved from the training split.

    Under DDP the training loader shards each epoch across ranks, and val/test are split
    rank::world so the ranks evaluate disjoint parts whose sums are all-reduced."""
    train_idx, val_idx = data.train_val_indices(cfg.val_size, cfg.seed)
    if cfg.train_per_class:  # at most N per class of what validation leaves, seeded
        train_idx = finetune.per_class_subset(data.train_y, train_idx, cfg.train_per_class, cfg.seed)
    common = dict(mean=data.mean, std=data.std, device=device, memory_budget=parse_bytes(cfg.memory_budget))
    r, w = ctx.rank, ctx.world_size
    loaders = {
        # subset=: the loader takes the rows itself (or streams them when over memory_budget)
        "train": DeviceLoader(data.train_x, data.train_y, cfg.train.batch_size, subset=train_idx,
                              shuffle=True, seed=cfg.seed, augment=augment, rank=r, world_size=w,
                              balanced=cfg.balanced_sampler, **common),
        "val": DeviceLoader(data.train_x, data.train_y, EVAL_BATCH, subset=val_idx[r::w], **common),
        "test": DeviceLoader(data.test_x[r::w], data.test_y[r::w], EVAL_BATCH, **common),
    }
    # the final per-class report needs every test image in one place (rank 0)
    loaders["test_full"] = loaders["test"] if w == 1 else DeviceLoader(data.test_x, data.test_y, EVAL_BATCH, **common)
    return loaders


@dataclass
class RunParts:
    """What a run trains with, as built from its config (a Session holds them)."""
    model: nn.Module  # the weights kept: what checkpoints hold
    train_model: nn.Module  # what the step runs: the model, DDP- and compile-wrapped when asked
    precision: Precision
    optimizer: torch.optim.Optimizer
    schedule: dict  # {"epochs", "steps_per_epoch"}: planned once; extending a run keeps the plan
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ema: nn.Module | None
    loss_fn: nn.Module
    class_balance: dict | None = None  # class weights or balanced sampling: what was used (class_balance)
    plateau: Plateau | None = None  # schedule = plateau: the callback whose factor the scheduler reads


def build_parts(cfg: Config, spec: dict, data: Dataset, device: torch.device, dist: distributed.DistContext,
                batches_per_epoch: int, *, schedule_epochs: int | None = None, given=None,
                allow_import: tuple[str, ...] | None = None, weights_bound: dict | None = None
                ) -> tuple[RunParts, finetune.Finetune | None]:
    """The run's parts, and its fine-tuning callback when a fine-tuning key is set. init_from
    loads on a fresh run only (a resume passes `schedule_epochs` and takes the weights from its
    checkpoint); freezing happens before the optimizer and EMA are built."""
    model, train_model = build_modules(cfg, spec, device, dist, given, allow_import, weights_bound)
    finetuning = finetune.setup(cfg, model, data, dist, fresh=schedule_epochs is None)
    precision = resolve_precision(cfg.train.precision, device, cfg.model)
    optimizer = build_optimizer(model, cfg.train, **finetune.optimizer_layout(cfg, model))
    # schedules count optimizer steps: with accumulation, one per group of micro-batches (the last may be short)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.train.accumulate)
    schedule = {"epochs": schedule_epochs or cfg.train.epochs, "steps_per_epoch": steps_per_epoch}
    plateau = Plateau(cfg.monitor, resolve_mode(cfg), cfg.train.plateau_factor, cfg.train.plateau_patience,
                      cfg.min_delta) if cfg.train.schedule == "plateau" else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(cfg.train, schedule["steps_per_epoch"], schedule["epochs"], plateau))
    if plateau is not None:
        plateau.scheduler = scheduler
    ema = make_ema(model, cfg.train.ema) if cfg.train.ema > 0 else None
    balance = class_balance(cfg, data)
    weight = torch.tensor(balance["weights"], dtype=torch.float32, device=device) \
        if balance and "weights" in balance else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.train.label_smoothing)
    return RunParts(model, train_model, precision, optimizer, schedule, scheduler, precision.scaler(device),
                    ema, loss_fn, balance, plateau=plateau), finetuning


def build_modules(cfg: Config, spec: dict, device: torch.device, dist: distributed.DistContext, given=None,
                allow_import: tuple[str, ...] | None = None, weights_bound: dict | None = None
                ) -> tuple[nn.Module, nn.Module]:
    """(model, train_model): the weights kept, and what the step runs (DDP- and compile-wrapped)."""
    shape, classes = spec["input_shape"], spec["num_classes"]
    if given is not None:  # train(model=...): the caller's instance, or a factory no file can name
        model = models.build_given(given, cfg.model, shape, classes, **spec["kwargs"])
    elif allow_import is None:  # a spec the user wrote now: it may import what it names
        model = models.build(cfg.model, shape, classes, **spec["kwargs"])
    else:  # a spec read from a run's files: through the one trust check
        model = models.build_from_spec(spec, allow_import, "the run's config", weights=weights_bound)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_model = model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # only the training forward is compiled; checkpoints hold the model's keys
        train_model = torch.compile(train_model)
    return model, train_model
