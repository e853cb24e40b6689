"""Recipes: named presets of everything that shapes training but is not the model.

`textbook` is the plain loop every tutorial writes (Adam 1e-3, batch 64, no schedule, no
augmentation). `fast` is the default: the best recipe measured in benchmarks/RESULTS.md.
Any field can be overridden from a TOML file or the command line; the resolved recipe is
written into the run folder and the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from trainlab.errors import ConfigError
from trainlab.text import hide_credentials

PRECISIONS = ("auto", "32", "16-mixed", "bf16-mixed")  # see trainlab.training.precision
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "onecycle", "cosine", "plateau", "step")


def option(default, help: str):
    """A config or recipe field with its help: the flag's help in `trainlab train --help`."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Recipe:
    epochs: int = option(10, "epochs to train")
    batch_size: int = option(64, "samples per step: the global batch, split across the processes under --nproc")
    accumulate: int = option(1, "micro-batches of batch_size per optimizer step (gradient accumulation: an "
                             "effective batch of batch_size x N; schedules count optimizer steps)")
    optimizer: str = option("adam", "adam, adamw or sgd")
    lr: float = option(1e-3, "learning rate: the peak rate when a schedule is on")
    weight_decay: float = option(0.0, "weight decay (0 = off)")
    momentum: float = option(0.9, "sgd only: momentum")
    nesterov: bool = option(False, "sgd only: Nesterov momentum")
    schedule: str = option("none", "the learning-rate schedule: none, onecycle, cosine, plateau (reduce on the "
                           "monitored metric's plateau) or step (at step_milestones)")
    warmup_epochs: float = option(0.0, "cosine only: epochs of warm-up (onecycle warms up over its first 25% "
                                  "of steps)")
    plateau_factor: float = option(0.1, "plateau only: multiply the rate by this when the monitored metric stalls")
    plateau_patience: int = option(2, "plateau only: validations without improvement (by more than min_delta) "
                                   "before the rate is reduced")
    step_milestones: list = field(default_factory=list, metadata={
        "help": "step only: epochs after which the rate is multiplied by step_gamma, e.g. [10, 20] (CLI: 10,20)"})
    step_gamma: float = option(0.1, "step only: the factor applied at each milestone")
    label_smoothing: float = option(0.0, "label smoothing of the loss (0 = off)")
    grad_clip: float = option(0.0, "clip the global gradient norm to this (0 = off)")
    # batched on-device augmentation (see trainlab.augment)
    translate: int = option(0, "augmentation: random shift of up to this many pixels (pad + crop)")
    hflip: bool = option(False, "augmentation: random horizontal flips (a preset's are left out for data "
                         "whose labels a mirror may change)")
    erase: float = option(0.0, "augmentation: probability of random erasing per image")
    rrc: float = option(0.0, "augmentation: random-resized-crop: each image cropped to a random area fraction "
                        "in [RRC, 1] (aspect 3/4..4/3) and resized back (0 = off)")
    brightness: float = option(0.0, "augmentation: scale each image's intensity by a random factor in "
                               "[1-B, 1+B] (0 = off)")
    contrast: float = option(0.0, "augmentation: stretch each image's contrast about its mean by a random factor "
                             "in [1-C, 1+C] (0 = off)")
    mixup: float = option(0.0, "batch augmentation: mixup, blending image pairs and their labels by "
                          "lam ~ Beta(ALPHA, ALPHA) (0 = off); label_smoothing then smooths the mixed targets")
    cutmix: float = option(0.0, "batch augmentation: cutmix, pasting a box of another image and mixing the labels "
                           "by the pixels kept, box from Beta(ALPHA, ALPHA) (0 = off; with mixup on too, each "
                           "image takes one of the two)")
    ema: float = option(0.0, "decay of an exponential moving average of the weights, which is evaluated "
                        "(0 = off)")
    tta_flip: bool = option(False, "average predictions over the image and its mirror at test time")
    precision: str = option("auto", "auto, 32, 16-mixed or bf16-mixed")  # see trainlab.training.precision

    def validate(self) -> "Recipe":
        check_fields(self, RECIPE_LIMITS)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


RECIPE_FIELDS = {f.name: f for f in fields(Recipe)}

# What each field allows: a test of (value, recipe) and the words for the error. Every number
# and choice field has a row (tests/test_config_edges.py checks that none is missing); the
# upper bounds keep a typo (lr = 1e9, epochs = 10**30) from reaching the optimizer or an
# allocation. Recipes hold only finite values, so they can always be written back as TOML.
RECIPE_LIMITS = {
    "epochs": (lambda v, r: 1 <= v <= 100_000, "must be at least 1 and at most 100000"),
    "batch_size": (lambda v, r: 1 <= v <= 2**20, "must be at least 1 and at most 1048576"),
    "accumulate": (lambda v, r: 1 <= v <= 4096, "must be at least 1 (1 = no accumulation) and at most 4096 "
                   "micro-batches per optimizer step"),
    "optimizer": (lambda v, r: v in OPTIMIZERS, f"choose one of {', '.join(OPTIMIZERS)}"),
    "lr": (lambda v, r: 0 < v <= 10, "must be greater than 0 and at most 10"),
    "weight_decay": (lambda v, r: 0 <= v <= 1, "must be in [0, 1]"),
    "momentum": (lambda v, r: 0 <= v < 1, "must be in [0, 1)"),
    "schedule": (lambda v, r: v in SCHEDULES, f"choose one of {', '.join(SCHEDULES)}"),
    "warmup_epochs": (lambda v, r: 0 <= v < r.epochs, "must be in [0, epochs)"),
    "plateau_factor": (lambda v, r: 0 < v < 1, "must be in (0, 1)"),
    "plateau_patience": (lambda v, r: 1 <= v <= 10**6, "must be at least 1 and at most 1000000"),
    "step_milestones": (lambda v, r: _milestones_ok(v, r), "must be increasing epochs, each at least 1 and at most "
                        "100000 (at most 100 of them), given when schedule = step and only then"),
    "step_gamma": (lambda v, r: 0 < v <= 1, "must be in (0, 1]"),
    "label_smoothing": (lambda v, r: 0 <= v < 1, "must be in [0, 1)"),
    "grad_clip": (lambda v, r: 0 <= v <= 1e6, "must be 0 (off) or a max norm up to 1000000"),
    # pixels of shift (augment.random_translate pads by this much on each side): the images
    # are 28-32 pixels, so more than 16 would shift most of an image out of view
    "translate": (lambda v, r: 0 <= v <= 16, "must be 0 (off) or a number of pixels up to 16"),
    "erase": (lambda v, r: 0 <= v <= 1, "must be a probability in [0, 1]"),
    # an area fraction below 0.05 leaves a few pixels of a 28-pixel image to blow up
    "rrc": (lambda v, r: v == 0 or 0.05 <= v <= 1, "must be 0 (off) or the smallest area fraction in [0.05, 1]"),
    "brightness": (lambda v, r: 0 <= v <= 1, "must be in [0, 1] (0 = off)"),
    "contrast": (lambda v, r: 0 <= v <= 1, "must be in [0, 1] (0 = off)"),
    # Beta(alpha, alpha): 0.1-1 is the usual range; past 10 every lam is close to 0.5
    "mixup": (lambda v, r: 0 <= v <= 10, "must be 0 (off) or a Beta alpha in (0, 10]"),
    "cutmix": (lambda v, r: 0 <= v <= 10, "must be 0 (off) or a Beta alpha in (0, 10]"),
    "ema": (lambda v, r: 0 <= v < 1, "must be 0 (off) or a decay in (0, 1)"),
    "precision": (lambda v, r: v in PRECISIONS, f"choose one of {', '.join(PRECISIONS)}"),
}


def _milestones_ok(v: list, r: "Recipe") -> bool:
    if not all(isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= 100_000 for m in v):
        return False
    return (len(v) <= 100 and all(a < b for a, b in zip(v, v[1:]))
            and bool(v) == (r.schedule == "step"))


def check_fields(obj, limits: dict) -> None:
    """Check each field of the dataclass `obj` that has a row in `limits`. Numbers must first
    be of the field's declared type (bool is not a number here) and finite: NaN and inf fail
    no comparison, so they would slip past a plain range test."""
    for f in fields(obj):
        if f.name not in limits:
            continue
        value = getattr(obj, f.name)
        annotation = str(f.type)
        if value is None and "None" in annotation:
            continue
        test, allowed = limits[f.name]
        if annotation.startswith(("int", "float")):
            kinds = int if annotation.startswith("int") else (int, float)
            ok = (isinstance(value, kinds) and not isinstance(value, bool)
                  and not (isinstance(value, float) and not math.isfinite(value)) and test(value, obj))
        elif annotation.startswith("list"):
            ok = isinstance(value, list) and test(value, obj)
        else:
            ok = isinstance(value, str) and test(value, obj)
        if not ok:
            shown = hide_credentials(repr(value)) if isinstance(value, str) else repr(value)
            raise ConfigError(f"{f.name} = {shown} is invalid: {allowed}")


PRESETS: dict[str, Recipe] = {
    "textbook": Recipe(),
    # The default: measured best for mlp and mlp-reg on CPU (benchmarks/RESULTS.md), with
    # bf16 autocast (precision "auto" picks it for these models: the step takes half the
    # time). One-cycle AdamW converges in 7-10 epochs. Batch 256 at peak lr 4e-3 beat batch
    # 512 at 6e-3 (the best of 2.5e-3..8e-3) by 0.1-0.2 points at every schedule, 3 seeds;
    # batch 512 is ~10% quicker to 90% on mlp but needs 512+ training samples. Label
    # smoothing 0.1 and weight decay kept (no difference on validation either way). Not for
    # the MLPs: flips + flip TTA (-0.3 points), EMA (no gain after one-cycle's anneal).
    "fast": Recipe(epochs=10, batch_size=256, optimizer="adamw", lr=4e-3, weight_decay=5e-4,
                   schedule="onecycle", label_smoothing=0.1),
    # The CNNs (cnn, cnn-fast) on CPU. AdamW one-cycle at batch 256 (512 tried: -0.1 point,
    # no faster per epoch); random horizontal flips with flip TTA (+0.2 val / +0.5 test points
    # over no augmentation at 10 epochs); random translation tried and dropped (-0.3 points
    # at 10 epochs). cnn-fast, 3 seeds: 93.89% at 10 epochs, 94.16% at 15.
    "fast-cnn": Recipe(epochs=10, batch_size=256, optimizer="adamw", lr=3e-3, weight_decay=5e-4,
                       schedule="onecycle", label_smoothing=0.1, hflip=True, tta_flip=True),
    # The top of the ladder (resnet): SGD-Nesterov one-cycle with the full augmentation set,
    # weight EMA (warmed up: trainlab.ema) and flip TTA. On the CPU, width 16 in bf16 for 35
    # epochs (a 10-minute budget) reached 94.90% val / 95.27% test (seed 0). Tried at 10 epochs
    # (width 16, seed 0, val): no EMA 93.46 vs 93.42, AdamW 3e-3 93.64: within noise, kept.
    # 30 epochs at width 64 is the plan for one GPU (not yet measured there).
    "resnet": Recipe(epochs=30, batch_size=256, optimizer="sgd", lr=0.2, momentum=0.9,
                     nesterov=True, weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1,
                     translate=2, hflip=True, erase=0.25, ema=0.999, tta_flip=True),
}
DEFAULT_RECIPE = "fast"  # `--recipe auto` (the default) picks the model's registered recipe, else this


def get_recipe(name: str, **overrides) -> Recipe:
    """A preset by name with `overrides` applied, validated."""
    if name not in PRESETS:
        raise ConfigError(f"unknown recipe {name!r}: choose one of {', '.join(PRESETS)}")
    unknown = set(overrides) - set(RECIPE_FIELDS)
    if unknown:
        raise ConfigError(f"unknown recipe field(s) {', '.join(sorted(unknown))}: "
                          f"known fields are {', '.join(RECIPE_FIELDS)}")
    return replace(PRESETS[name], **overrides).validate()
